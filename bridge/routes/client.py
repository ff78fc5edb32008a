"""Forwarded routes: the client-server API, media, and allow-listed admin API.

Some requests are looked into before they are forwarded, because the
homeserver would trust them on the appservice's word: an
``m.login.application_service`` login, a cross-signing key upload that
replaces existing keys (the homeserver skips user-interactive auth for
appservices; the bridge asks for the ``m.oauth`` stage instead, as Synapse
does with MAS), alias creation (the bridge checks the membership the
homeserver skips), and the guarded requests of
:mod:`bridge.homeserver.privileges`.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from bridge.auth.identity import ADMIN_SCOPE, Identity
from bridge.auth.middleware import FORWARDED_ROUTE
from bridge.errors import BadRequest, Forbidden, MatrixError
from bridge.forward.forwarder import Forwarder
from bridge.homeserver import privileges
from bridge.http.paths import CLIENT
from bridge.routes.capabilities import CAPABILITIES, capabilities
from bridge.routes.closed_doors import account_management_url, refusal
from bridge.state import CONFIG, FORWARDER, IDENTITY, METRICS, PATH, RESET_APPROVALS

# The JSON bodies read here are small; a larger one is not what it claims to be.
_MAX_JSON_BODY = 64 * 1024
_LOGIN = re.compile(rf"{CLIENT}/login")
_SIGNING_KEYS_UPLOAD = re.compile(rf"{CLIENT}/keys/device_signing/upload")
# Upload field → /keys/query field holding the current key of that kind.
_CROSS_SIGNING_KEYS = {
    "master_key": "master_keys",
    "self_signing_key": "self_signing_keys",
    "user_signing_key": "user_signing_keys",
}


async def forward(request: web.Request) -> web.StreamResponse:
    identity = request[IDENTITY]
    if request.match_info.route.name == FORWARDED_ROUTE + "admin" and (
        identity is None or not identity.admin
    ):
        # Allow-listed or not, the admin API needs a token with the admin scope, as
        # Synapse asks of MAS tokens.
        raise Forbidden(f"The homeserver admin API needs the {ADMIN_SCOPE} scope")
    if request.method == "POST":
        if _LOGIN.fullmatch(request[PATH]):
            return await login(request)
        if _SIGNING_KEYS_UPLOAD.fullmatch(request[PATH]):
            return await signing_keys_upload(request)
    forwarder = request.app[FORWARDER]
    if identity is not None and forwarder.appservice_power_for(identity):
        raw_path = request.rel_url.raw_path
        if request.method == "PUT" and (match := privileges.ALIAS_CREATION.fullmatch(raw_path)):
            return await alias_creation(request, identity, unquote(match["alias"]))
        if request.method == "POST" and privileges.CREATE_ROOM.fullmatch(raw_path):
            return await room_creation(request, identity)
        method = "GET" if request.method == "HEAD" else request.method  # as Synapse routes
        if method == "DELETE" and (match := privileges.ALIAS_CREATION.fullmatch(raw_path)):
            _alias_not_exclusive(request, unquote(match["alias"]))
        await privileges.check(forwarder, identity, method, raw_path)
    if request.method == "GET" and CAPABILITIES.fullmatch(request[PATH]):
        return await capabilities(request)
    return await forwarder.forward(request, identity)


def _alias_not_exclusive(request: web.Request, alias: str) -> None:
    privileges.check_alias_not_exclusive(request.app[CONFIG].appservice.exclusive_aliases, alias)


async def alias_creation(
    request: web.Request, identity: Identity, alias: str
) -> web.StreamResponse:
    """``PUT /directory/room/{alias}``: only for a room the user is in, outside other
    appservices' exclusive namespaces."""
    body, parsed = await read_json_object(request)
    _alias_not_exclusive(request, alias)
    forwarder = request.app[FORWARDER]
    await privileges.check_alias_creation(forwarder, identity, parsed.get("room_id"))
    return await forwarder.forward(request, identity, body=body)


async def room_creation(request: web.Request, identity: Identity) -> web.StreamResponse:
    """``POST /createRoom`` with ``room_alias_name``: not in another appservice's namespace."""
    body, parsed = await read_json_object(request)
    name = parsed.get("room_alias_name")
    if isinstance(name, str):
        _alias_not_exclusive(request, f"#{name}:{request.app[CONFIG].server_name}")
    return await request.app[FORWARDER].forward(request, identity, body=body)


async def read_at_most(request: web.Request, limit: int) -> bytes | None:
    """The whole body however it arrives, or None as soon as it is over ``limit`` bytes."""
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def read_json_object(request: web.Request) -> tuple[bytes, dict[str, Any]]:
    body = await read_at_most(request, _MAX_JSON_BODY)
    if body is None:
        raise MatrixError("Request too large", errcode="M_TOO_LARGE", status=413)
    try:
        parsed = json.loads(body)
    except ValueError as e:
        raise BadRequest("Body is not JSON", errcode="M_NOT_JSON") from e
    if not isinstance(parsed, dict):
        raise BadRequest("Body is not a JSON object", errcode="M_BAD_JSON")
    return body, parsed


async def login(request: web.Request) -> web.StreamResponse:
    """``POST /login``: forwarded, except the appservice login type."""
    body, parsed = await read_json_object(request)
    if parsed.get("type") == "m.login.application_service":
        request.app[METRICS].closed_door["appservice_login"].inc()
        raise refusal(request, "Application-service login")
    return await request.app[FORWARDER].forward(request, request[IDENTITY], body=body)


async def signing_keys_upload(request: web.Request) -> web.StreamResponse:
    """``POST /keys/device_signing/upload``: first set-up passes, a reset needs ``m.oauth``.

    A reset MAS approved (``allow_cross_signing_reset``) passes, with the
    appservice's power for that one request (a device's own token would meet
    the homeserver's user-interactive auth); a new master key uses the
    approval up, as Synapse's window closes on one.
    """
    identity = request[IDENTITY]
    body, parsed = await read_json_object(request)
    forwarder = request.app[FORWARDER]
    changed = await _changed_cross_signing_keys(forwarder, identity, parsed) if identity else set()
    if identity is not None and changed:
        approvals = request.app[RESET_APPROVALS]
        if "master_key" in changed:
            approved_until = approvals.consume(identity.user_id)
            approved = approved_until is not None
        else:
            approved_until, approved = None, approvals.is_open(identity.user_id)
        if approved:
            response = await forwarder.forward(request, identity, body=body, appservice=True)
            if approved_until is not None and not 200 <= response.status < 300:
                approvals.restore(identity.user_id, approved_until)
            return response
        request.app[METRICS].closed_door["cross_signing_reset"].inc()
        url = f"{account_management_url(request)}?action=org.matrix.cross_signing_reset"
        return web.json_response(
            {
                "session": "dummy",
                "flows": [{"stages": ["m.oauth"]}, {"stages": ["org.matrix.cross_signing_reset"]}],
                "params": {
                    "m.oauth": {"url": url},
                    "org.matrix.cross_signing_reset": {"url": url},
                },
                "msg": "To reset your end-to-end encryption cross-signing identity, "
                f"you first need to approve it at {url} and then try again.",
            },
            status=401,
        )
    return await forwarder.forward(request, identity, body=body)


async def _changed_cross_signing_keys(
    forwarder: Forwarder, identity: Identity, upload: dict[str, Any]
) -> set[str]:
    """The upload's fields that change keys of a cross-signing identity that already
    exists (none for a first set-up or an identical upload)."""
    status, current = await forwarder.call_as(
        identity, "POST", "/_matrix/client/v3/keys/query", {"device_keys": {identity.user_id: []}}
    )
    if status != 200:
        raise MatrixError("The homeserver could not list the current keys", status=502)

    def current_key(field: str) -> Any:
        keys = current.get(field)
        return keys.get(identity.user_id) if isinstance(keys, dict) else None

    if current_key("master_keys") is None:
        return set()  # first set-up: allowed without re-authentication (MSC3967)
    changed: set[str] = set()
    for upload_field, query_field in _CROSS_SIGNING_KEYS.items():
        new = upload.get(upload_field)
        if new is None:
            continue
        old = current_key(query_field)
        if not isinstance(new, dict) or not isinstance(old, dict):
            changed.add(upload_field)  # a key given where there was none
        elif new.get("keys") != old.get("keys"):
            changed.add(upload_field)
    return changed


def add_routes(app: web.Application) -> None:
    """Catch-alls go last: the bridge's own routes are registered before them."""
    for prefix, name in (
        ("/_matrix/client", "client"),
        ("/_matrix/media", "media"),
        ("/_synapse/admin", "admin"),
    ):
        app.router.add_route("*", prefix + "/{tail:.*}", forward, name=FORWARDED_ROUTE + name)
