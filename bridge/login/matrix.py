"""The Matrix side of the login layer: ``/login``, ``/refresh``, ``/logout``, ``/logout/all``.

- ``GET /login``: ``m.login.sso`` (one identity provider, MSC3824's
  ``oauth_aware_preferred`` and ``org.matrix.msc3824.delegated_oidc_compatibility``)
  and ``m.login.token``; ``m.login.password`` only with ``login.password_grant``
  and an issuer that allows the grant.
- ``POST /login``: ``m.login.token`` uses a ``loginToken`` up (once, across
  instances) and answers the issuer's tokens for its device;
  ``m.login.password`` (opt-in) is exchanged at the issuer's token endpoint;
  ``m.login.application_service`` stays refused (404, as Synapse in MAS mode);
  anything else is 400 ``M_UNKNOWN``.
- ``POST /refresh``: a refresh token the bridge handed out, refreshed at the
  issuer; any other (unknown, revoked, used up) is 401 ``M_UNKNOWN_TOKEN``
  with ``soft_logout: false``.
- ``POST /logout``, ``/logout/all``: :class:`~bridge.login.service.LoginLayer`.

Errors are Matrix JSON with the status Synapse uses for each.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from bridge.auth.identity import DEVICE_ID, LOCALPART, Identity
from bridge.auth.middleware import LoggedOut, bearer_token, identify
from bridge.errors import BadRequest, Forbidden, MatrixError, MissingToken, UnknownToken
from bridge.issuer.oauth import GrantRefused
from bridge.login.service import Issued, LoginFailed, LoginLayer, new_device_id
from bridge.login.sso import LOGIN_TOKEN
from bridge.routes.client import read_json_object
from bridge.routes.closed_doors import refusal
from bridge.routes.well_known import client_document
from bridge.state import AUTHENTICATOR, CONFIG, LOGIN

log = logging.getLogger("bridge.login")


def password_login_available(layer: LoginLayer) -> bool:
    return layer.config.password_grant and layer.oauth.supports_password_grant()


async def login_flows(request: web.Request) -> web.Response:
    layer = request.app[LOGIN]
    sso = {
        "type": "m.login.sso",
        "identity_providers": [{"id": layer.config.idp_id, "name": layer.config.idp_name}],
        "oauth_aware_preferred": True,
        "org.matrix.msc3824.delegated_oidc_compatibility": True,
    }
    flows: list[dict[str, Any]] = [sso, {"type": "m.login.token"}]
    if password_login_available(layer):
        flows.append({"type": "m.login.password"})
    return web.json_response({"flows": flows})


async def login(request: web.Request) -> web.Response:
    _body, parsed = await read_json_object(request)
    layer = request.app[LOGIN]
    kind = parsed.get("type")
    if kind == "m.login.token":
        return await _token_login(request, layer, parsed)
    if kind == "m.login.password" and password_login_available(layer):
        return await _password_login(request, layer, parsed)
    if kind == "m.login.application_service":
        raise refusal(request, "Application-service login")
    raise BadRequest("Unknown login type", errcode="M_UNKNOWN")


def _display_name(parsed: dict[str, Any]) -> str | None:
    name = parsed.get("initial_device_display_name")
    if name is not None and not isinstance(name, str):
        raise BadRequest("initial_device_display_name must be a string", errcode="M_BAD_JSON")
    return name


def _requested_device(parsed: dict[str, Any]) -> str | None:
    device_id = parsed.get("device_id")
    if device_id is None:
        return None
    if not isinstance(device_id, str) or not DEVICE_ID.fullmatch(device_id):
        raise BadRequest("device_id is not a valid device ID")
    return device_id


async def _token_login(
    request: web.Request, layer: LoginLayer, parsed: dict[str, Any]
) -> web.Response:
    token = parsed.get("token")
    if not isinstance(token, str) or not token:
        raise BadRequest("Missing login token", errcode="M_MISSING_PARAM")
    requested = _requested_device(parsed)
    display_name = _display_name(parsed)
    taken = await layer.store.take_secret(LOGIN_TOKEN, token, int(layer.clock.time()))
    if taken is None:
        raise Forbidden("Invalid login token")
    issued = Issued.from_json(taken[1])
    if requested is not None and requested != issued.device_id:
        raise BadRequest(
            f"This login token is for device {issued.device_id}; log in again without device_id"
        )
    identity = await _still_valid(request, issued.access_token)
    await layer.provision(identity, display_name)
    return web.json_response(issued.matrix_answer(client_document(request), layer.clock.time()))


async def _still_valid(request: web.Request, access_token: str) -> Identity:
    """The identity of a token about to be handed out, which must not have been logged
    out meanwhile (a back-channel logout between the callback and now)."""
    try:
        return await identify(request, access_token)
    except LoggedOut:
        raise Forbidden("Invalid login token") from None


def _password_localpart(request: web.Request, parsed: dict[str, Any]) -> str:
    identifier = parsed.get("identifier")
    user: object
    if isinstance(identifier, dict):
        if identifier.get("type") != "m.id.user":
            raise BadRequest("Only m.id.user identifiers are supported", errcode="M_UNKNOWN")
        user = identifier.get("user")
    else:
        user = parsed.get("user")  # the deprecated form
    if not isinstance(user, str) or not user:
        raise BadRequest("Missing user identifier", errcode="M_MISSING_PARAM")
    server_name = request.app[CONFIG].server_name
    if user.startswith("@"):
        localpart, sep, server = user[1:].partition(":")
        if not sep or server != server_name:
            raise Forbidden("Invalid username or password")
        user = localpart
    localpart = user.lower()
    if not LOCALPART.fullmatch(localpart):
        raise Forbidden("Invalid username or password")
    return localpart


async def _password_login(
    request: web.Request, layer: LoginLayer, parsed: dict[str, Any]
) -> web.Response:
    localpart = _password_localpart(request, parsed)
    password = parsed.get("password")
    if not isinstance(password, str) or not password:
        raise BadRequest("Missing password", errcode="M_MISSING_PARAM")
    device_id = _requested_device(parsed) or new_device_id()
    display_name = _display_name(parsed)
    try:
        tokens = await layer.oauth.password(localpart, password, layer.scope(device_id))
    except GrantRefused as e:
        if e.error == "invalid_grant":
            raise Forbidden("Invalid username or password") from e
        log.warning("the issuer refused the password grant: %s", e.error)
        raise BadRequest("Password login is not available", errcode="M_UNKNOWN") from e
    try:
        issued, identity = await layer.adopt(
            tokens, device_id=device_id, nonce=None, localpart=localpart
        )
    except LoginFailed as e:
        raise Forbidden(str(e)) from e
    await layer.provision(identity, display_name)
    return web.json_response(issued.matrix_answer(client_document(request), layer.clock.time()))


async def refresh(request: web.Request) -> web.Response:
    _body, parsed = await read_json_object(request)
    refresh_token = parsed.get("refresh_token")
    if not isinstance(refresh_token, str) or not refresh_token:
        raise BadRequest("Missing refresh_token", errcode="M_MISSING_PARAM")
    layer = request.app[LOGIN]
    session = await layer.store.session_by_refresh(refresh_token)
    if session is None:
        raise UnknownToken("Unknown refresh token")
    try:
        tokens = await layer.oauth.refresh(refresh_token)
    except GrantRefused as e:
        await layer.store.take_sessions(session.user_id, session.device_id)
        raise UnknownToken("The refresh token is no longer valid") from e
    try:
        identity = await request.app[AUTHENTICATOR].authenticate(tokens.access_token)
    except MatrixError as e:
        await layer.revoke_issued(tokens)
        raise UnknownToken("The refreshed token cannot be used") from e
    replaced = (identity.user_id, identity.device_id) == (
        session.user_id,
        session.device_id,
    ) and await layer.store.replace_refresh(
        session.user_id, session.device_id, refresh_token, tokens.refresh_token or refresh_token
    )
    if not replaced:
        # Another device's token, a refresh that raced this one, or a logout meanwhile.
        await layer.revoke_issued(tokens)
        raise UnknownToken("The refresh token is no longer valid")
    answer: dict[str, object] = {
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token or refresh_token,
    }
    if tokens.expires_in is not None:
        answer["expires_in_ms"] = tokens.expires_in * 1000
    return web.json_response(answer)


async def _logged_in(request: web.Request) -> tuple[str, Identity]:
    token = bearer_token(request)
    if token is None:
        raise MissingToken("Missing access token")
    return token, await identify(request, token)


async def logout(request: web.Request) -> web.Response:
    token, identity = await _logged_in(request)
    if identity.device_id is None:
        # A device-less token (the API scope alone): nothing on the homeserver to end.
        expires_at = request.app[AUTHENTICATOR].forget(token)
        await request.app[LOGIN].end_token(identity.user_id, token, expires_at)
        return web.json_response({})
    await request.app[LOGIN].end_device(identity.user_id, identity.device_id, token)
    return web.json_response({})


async def logout_all(request: web.Request) -> web.Response:
    token, identity = await _logged_in(request)
    await request.app[LOGIN].end_user(identity.user_id, token)
    return web.json_response({})


def add_routes(app: web.Application) -> None:
    """Before the client catch-all, so these paths never reach the homeserver."""
    version = "/_matrix/client/{version:r0|v3}"
    app.router.add_get(f"{version}/login", login_flows, name="login:flows")
    app.router.add_post(f"{version}/login", login, name="login:login")
    app.router.add_post(f"{version}/refresh", refresh, name="login:refresh")
    app.router.add_post(f"{version}/logout", logout, name="login:logout")
    app.router.add_post(f"{version}/logout/all", logout_all, name="login:logout_all")
