"""OpenID Connect Back-Channel Logout 1.0: the issuer tells the bridge a session ended.

``POST /_bridge/backchannel_logout`` (the ``backchannel_logout_uri`` the
operator registers for the bridge's client, with
``backchannel_logout_session_required: true`` so that ID tokens carry
``sid``), form-encoded ``logout_token=<JWT>``. The token is checked as §2.6
says (:meth:`~bridge.login.jwts.JwtChecks.logout_token`: signature from the
issuer's JWKS, ``iss``, ``aud`` the bridge's client ID, ``iat``, the
``events`` claim, no ``nonce``) and its ``jti`` is used once, across
instances (the store). Then the sessions the bridge made with that ``sid``
(and ``sub``, when both are given), or with that ``sub`` alone, are ended as
``/logout`` ends a device: their tokens refused at once on every instance,
their refresh tokens revoked, their homeserver devices deleted.

Answers as §2.8 says: 200 (with ``Cache-Control: no-store``) when the token
is valid, whether or not the bridge knew the session; 400 with an OAuth error
body when it is not, and nothing changes; 501 when the bridge has no keys to
check signatures with.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

from aiohttp import web

from bridge.errors import IssuerUnavailable
from bridge.login.jwts import JwtRefused
from bridge.routes.client import read_at_most
from bridge.state import LOGIN

log = logging.getLogger("bridge.login")

PATH = "/_bridge/backchannel_logout"
# A logout token is a few KiB at most.
_MAX_BODY = 64 * 1024


def _answer(status: int, error: str | None = None, description: str = "") -> web.Response:
    body = {} if error is None else {"error": error, "error_description": description}
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})


async def backchannel_logout(request: web.Request) -> web.Response:
    layer = request.app[LOGIN]
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return _answer(400, "invalid_request", "expected a form-encoded logout_token")
    if request.content_length is not None and request.content_length > _MAX_BODY:
        return _answer(400, "invalid_request", "body too large")
    body = await read_at_most(request, _MAX_BODY)
    if body is None:
        return _answer(400, "invalid_request", "body too large")
    try:
        form = parse_qs(body.decode("ascii"), strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        return _answer(400, "invalid_request", "the body is not a form")
    tokens = form.get("logout_token", [])
    if len(tokens) != 1:
        return _answer(400, "invalid_request", "exactly one logout_token is needed")
    try:
        claims = await layer.jwts.logout_token(tokens[0], now=layer.clock.time())
    except JwtRefused as e:
        log.warning("logout token refused: %s", e)
        return _answer(400, "invalid_request", "the logout token is not valid")
    except IssuerUnavailable:
        return _answer(503, "temporarily_unavailable", "the issuer's keys cannot be read now")
    if not await layer.store.use_logout_token_id(claims.jti, claims.remember_until):
        log.warning("logout token refused: its jti was used before")
        return _answer(400, "invalid_request", "the logout token was used before")
    if claims.sid is not None:
        sessions = await layer.store.sessions(sid=claims.sid, sub=claims.sub)
    else:
        sessions = await layer.store.sessions(sub=claims.sub)
    log.info("back-channel logout ends %d session(s)", len(sessions))
    await layer.end_sessions(sessions)
    return _answer(200)


def add_routes(app: web.Application) -> None:
    app.router.add_post(PATH, backchannel_logout, name="login:backchannel_logout")
