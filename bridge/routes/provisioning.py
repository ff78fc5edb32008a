"""MAS's homeserver provisioning API (``/_synapse/mas/*``), served with ``issuer.kind: mas``.

The twelve endpoints of Synapse 1.163 with its methods, bodies, status codes
and answers (docs/mas-provisioning-api.md): authenticated by MAS's shared
secret (``issuer.introspection.client_secret``, MAS's ``matrix.secret``),
compared in constant time before anything else is looked at; request bodies
validated as Synapse's strict models do; then carried out by
:class:`~bridge.homeserver.provisioning.Provisioning`.

These routes are named ``mas:*``, so the client auth middleware (which acts
on ``forward:*`` routes only) leaves them alone: the shared secret is their
only credential, and it is never accepted anywhere else.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from bridge.errors import BadRequest, Forbidden, MatrixError, NotFound
from bridge.homeserver.provisioning import ProfileChange, Provisioning
from bridge.state import CONFIG, METRICS, PROVISIONING

log = logging.getLogger("bridge.provisioning")

MAS_ROUTE = "mas:"
PREFIX = "/_synapse/mas/"
# Synapse's respond_with_json on every answer of these endpoints.
_NO_CACHE = {"Cache-Control": "no-cache, no-store, must-revalidate"}

# -- authentication -----------------------------------------------------------------


def on_its_listener(request: web.Request) -> None:
    """With ``issuer.provisioning_listen``, the API exists on that listener only."""
    listen = request.app[CONFIG].issuer.provisioning_listen
    if listen is None:
        return
    local = request.transport.get_extra_info("sockname") if request.transport else None
    if not local or local[1] != listen.port:
        raise NotFound("Unrecognized request")


def authenticate(request: web.Request) -> None:
    """Refuse with 403 ``M_FORBIDDEN`` anything but ``Authorization: Bearer <MAS's
    shared secret>``, compared in constant time: a missing, malformed or doubled
    header, or another secret, alike (MAS always sends the header). The secret
    is never read from the query string, where proxies would log it."""
    headers = request.headers.getall("Authorization", [])
    scheme, _, token = headers[0].partition(" ") if len(headers) == 1 else ("", "", "")
    introspection = request.app[CONFIG].issuer.introspection  # required with kind: mas
    secret = introspection.client_secret if introspection is not None else ""
    if not (
        scheme.lower() == "bearer"
        and token.isascii()
        and secret
        and hmac.compare_digest(token.encode(), secret.encode())
    ):
        raise Forbidden("This endpoint must only be called by MAS")


# -- request bodies -----------------------------------------------------------------

FieldKind = Literal["string", "boolean", "strings"]


@dataclass(frozen=True)
class Field:
    """One field of a request model (Synapse's pydantic models are strict, extra keys
    are ignored). ``nullable``: ``null`` is accepted (``Optional``)."""

    name: str
    kind: FieldKind = "string"
    required: bool = True
    nullable: bool = False


_TYPE_ERRORS = {
    "string": ("string_type", "Input should be a valid string"),
    "boolean": ("bool_type", "Input should be a valid boolean"),
    "strings": ("list_type", "Input should be a valid list"),
}


def _type_errors(field: Field, value: object) -> list[tuple[str, str, str]]:
    """(location, type, message) of each validation error of ``value``."""
    if value is None and field.nullable:
        return []
    if field.kind == "string":
        ok = isinstance(value, str)
    elif field.kind == "boolean":
        ok = isinstance(value, bool)
    else:
        if not isinstance(value, list):
            return [(field.name, *_TYPE_ERRORS["strings"])]
        return [
            (f"{field.name}.{i}", *_TYPE_ERRORS["string"])
            for i, item in enumerate(value)
            if not isinstance(item, str)
        ]
    return [] if ok else [(field.name, *_TYPE_ERRORS[field.kind])]


def _validation_error(errors: list[tuple[str, str, str]], errcode: str) -> BadRequest:
    """Shaped like pydantic's message (without the input, which may hold user data)."""
    count = len(errors)
    lines = [f"{count} validation error{'s' if count > 1 else ''} for PostBody"]
    for location, kind, message in errors:
        lines += [location, f"  {message} [type={kind}]"] if location else [f"  {message}"]
    return BadRequest("\n".join(lines), errcode=errcode)


def _reject_constant(name: str) -> None:
    raise ValueError(name)


def parse_body(
    raw: bytes, fields: Sequence[Field], exclusive: Sequence[tuple[str, str]] = ()
) -> dict[str, Any]:
    """The validated body, as Synapse's ``parse_and_validate_json_object_from_request``:

    not JSON (empty, not UTF-8, NaN) → ``M_NOT_JSON``; not an object →
    ``M_BAD_JSON``; both keys of an ``exclusive`` pair present (whatever their
    values; checked before the fields) → ``M_INVALID_PARAM``; exactly one
    missing field and nothing else → ``M_MISSING_PARAM``; any other error, or
    several → ``M_BAD_JSON``. Absent optional fields are absent from the result.
    """
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest("Content not JSON.", errcode="M_NOT_JSON") from e
    if not isinstance(body, dict):
        raise BadRequest("Content must be a JSON object.", errcode="M_BAD_JSON")
    for first, second in exclusive:
        if first in body and second in body:
            message = f"Value error, Cannot specify both {first} and {second} [type=value_error]"
            raise _validation_error([("", "value_error", message)], "M_INVALID_PARAM")
    errors: list[tuple[str, str, str]] = []
    for field in fields:
        if field.name not in body:
            if field.required:
                errors.append((field.name, "missing", "Field required"))
            continue
        errors += _type_errors(field, body[field.name])
    if errors:
        only_missing = len(errors) == 1 and errors[0][1] == "missing"
        raise _validation_error(errors, "M_MISSING_PARAM" if only_missing else "M_BAD_JSON")
    return {field.name: body[field.name] for field in fields if field.name in body}


def _ascii_query(request: web.Request, name: str) -> str | None:
    """Synapse's ``parse_string``: the first value, which must be ASCII."""
    values = request.rel_url.query.getall(name, [])
    if not values:
        return None
    if not values[0].isascii():
        raise BadRequest(f"Query parameter {name!r} must be ascii", errcode="M_UNKNOWN")
    return values[0]


LOCALPART = Field("localpart")
DEVICE_ID = Field("device_id")
PROVISION_USER = (
    LOCALPART,
    Field("unset_displayname", "boolean", required=False),
    Field("set_displayname", required=False, nullable=True),
    Field("unset_avatar_url", "boolean", required=False),
    Field("set_avatar_url", required=False, nullable=True),
    Field("unset_emails", "boolean", required=False),
    Field("set_emails", "strings", required=False, nullable=True),
    Field("locked", "boolean", required=False, nullable=True),
)
PROVISION_USER_EXCLUSIVE = (
    ("unset_displayname", "set_displayname"),
    ("unset_avatar_url", "set_avatar_url"),
    ("unset_emails", "set_emails"),
)
DELETE_USER = (LOCALPART, Field("erase", "boolean"))
SET_DISPLAYNAME = (LOCALPART, Field("displayname"))
UPSERT_DEVICE = (LOCALPART, DEVICE_ID, Field("display_name", required=False, nullable=True))
UPDATE_DEVICE_DISPLAY_NAME = (LOCALPART, DEVICE_ID, Field("display_name"))
DELETE_DEVICE = (LOCALPART, DEVICE_ID)
SYNC_DEVICES = (LOCALPART, Field("devices", "strings"))


async def _body(
    request: web.Request, fields: Sequence[Field], exclusive: Sequence[tuple[str, str]] = ()
) -> dict[str, Any]:
    return parse_body(await request.read(), fields, exclusive)


def _ok(status: int = 200) -> web.Response:
    return web.json_response({}, status=status)


# -- endpoints ------------------------------------------------------------------------


async def query_user(request: web.Request, mas: Provisioning) -> web.Response:
    localpart = _ascii_query(request, "localpart")
    if localpart is None:
        raise BadRequest("Missing string query parameter 'localpart'", errcode="M_MISSING_PARAM")
    return web.json_response(await mas.query_user(localpart))


async def provision_user(request: web.Request, mas: Provisioning) -> web.Response:
    body = await _body(request, PROVISION_USER, PROVISION_USER_EXCLUSIVE)
    displayname = "" if body.get("unset_displayname") else body.get("set_displayname")
    avatar_url = "" if body.get("unset_avatar_url") else body.get("set_avatar_url")
    created = await mas.provision_user(
        body["localpart"],
        profile=ProfileChange(displayname=displayname, avatar_url=avatar_url),
        locked=body.get("locked"),
        emails_given=body.get("unset_emails") is True or body.get("set_emails") is not None,
    )
    # MAS accepts exactly these two.
    return _ok(201 if created else 200)


async def is_localpart_available(request: web.Request, mas: Provisioning) -> web.Response:
    localpart = _ascii_query(request, "localpart")
    if localpart is None:
        raise BadRequest("Missing localpart", errcode="M_UNKNOWN")
    await mas.check_localpart_available(localpart)
    return _ok()


async def delete_user(request: web.Request, mas: Provisioning) -> web.Response:
    body = await _body(request, DELETE_USER)
    await mas.delete_user(body["localpart"], erase=body["erase"])
    return _ok()


async def reactivate_user(request: web.Request, mas: Provisioning) -> web.Response:
    body = await _body(request, (LOCALPART,))
    await mas.reactivate_user(body["localpart"])
    return _ok()


async def set_displayname(request: web.Request, mas: Provisioning) -> web.Response:
    body = await _body(request, SET_DISPLAYNAME)
    await mas.set_displayname_of(body["localpart"], body["displayname"])
    return _ok()


async def unset_displayname(request: web.Request, mas: Provisioning) -> web.Response:
    body = await _body(request, (LOCALPART,))
    await mas.set_displayname_of(body["localpart"], "")
    return _ok()


async def upsert_device(request: web.Request, mas: Provisioning) -> web.Response:
    body = await _body(request, UPSERT_DEVICE)
    created = await mas.upsert_device(
        body["localpart"], body["device_id"], body.get("display_name")
    )
    return _ok(201 if created else 200)


async def update_device_display_name(request: web.Request, mas: Provisioning) -> web.Response:
    body = await _body(request, UPDATE_DEVICE_DISPLAY_NAME)
    await mas.rename_device(body["localpart"], body["device_id"], body["display_name"])
    return _ok()


async def delete_device(request: web.Request, mas: Provisioning) -> web.Response:
    body = await _body(request, DELETE_DEVICE)
    await mas.delete_device(body["localpart"], body["device_id"])
    return web.Response(status=204)  # no body, as Twisted sends Synapse's 204


async def sync_devices(request: web.Request, mas: Provisioning) -> web.Response:
    body = await _body(request, SYNC_DEVICES)
    await mas.sync_devices(body["localpart"], body["devices"])
    return _ok()


async def allow_cross_signing_reset(request: web.Request, mas: Provisioning) -> web.Response:
    body = await _body(request, (LOCALPART,))
    await mas.allow_cross_signing_reset(body["localpart"])
    return _ok()


Endpoint = Callable[[web.Request, Provisioning], Awaitable[web.Response]]

ENDPOINTS: dict[str, tuple[str, Endpoint]] = {
    "query_user": ("GET", query_user),
    "provision_user": ("POST", provision_user),
    "is_localpart_available": ("GET", is_localpart_available),
    "delete_user": ("POST", delete_user),
    "reactivate_user": ("POST", reactivate_user),
    "set_displayname": ("POST", set_displayname),
    "unset_displayname": ("POST", unset_displayname),
    "upsert_device": ("POST", upsert_device),
    "update_device_display_name": ("POST", update_device_display_name),
    "delete_device": ("POST", delete_device),
    "sync_devices": ("POST", sync_devices),
    "allow_cross_signing_reset": ("POST", allow_cross_signing_reset),
}


def _served(
    name: str, endpoint: Endpoint
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The shared secret first (before the body is even read), then the endpoint; every
    answer, errors included, uncacheable, and counted by endpoint and status."""

    async def serve(request: web.Request) -> web.StreamResponse:
        response: web.StreamResponse
        try:
            on_its_listener(request)
            authenticate(request)
            response = await endpoint(request, request.app[PROVISIONING])
        except MatrixError as e:
            response = e.to_response()
        except Exception:
            request.app[METRICS].provisioning_done(name, 500)
            raise
        response.headers.update(_NO_CACHE)
        request.app[METRICS].provisioning_done(name, response.status)
        log.debug("MAS provisioning call %s: HTTP %s", name, response.status)
        return response

    return serve


def add_routes(app: web.Application) -> None:
    """Register the twelve endpoints (only with ``issuer.kind: mas``)."""
    for name, (method, endpoint) in ENDPOINTS.items():
        resource = app.router.add_resource(PREFIX + name, name=MAS_ROUTE + name)
        resource.add_route(method, _served(name, endpoint))
        if method == "GET":
            resource.add_route("HEAD", _served(name, endpoint))  # as Synapse serves it
        resource.add_route("*", _unrecognized_method)


async def _unrecognized_method(request: web.Request) -> web.StreamResponse:
    """Synapse's answer to a method an endpoint does not implement."""
    raise MatrixError("Unrecognized request", errcode="M_UNRECOGNIZED", status=405)
