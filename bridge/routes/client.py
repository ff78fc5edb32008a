"""Forwarded routes: the client-server API, media, and allow-listed admin API."""

from __future__ import annotations

import json

from aiohttp import web

from bridge.auth.middleware import FORWARDED_ROUTE
from bridge.errors import BadRequest, MatrixError
from bridge.routes.refused import refusal
from bridge.state import FORWARDER, IDENTITY

# A login body is small; a larger one is not a login.
_MAX_LOGIN_BODY = 64 * 1024


async def forward(request: web.Request) -> web.StreamResponse:
    return await request.app[FORWARDER].forward(request, request[IDENTITY])


async def login(request: web.Request) -> web.StreamResponse:
    """``POST /login``: forwarded, except the appservice login type.

    The body is read (bounded) to see its ``type``: an ``m.login.application_service``
    login through the bridge would hand out homeserver-native tokens.
    """
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > _MAX_LOGIN_BODY:
            raise MatrixError("Login request too large", errcode="M_TOO_LARGE", status=413)
    try:
        login_type = json.loads(body).get("type")
    except (ValueError, AttributeError) as e:
        raise BadRequest("Login body is not a JSON object", errcode="M_NOT_JSON") from e
    if login_type == "m.login.application_service":
        raise refusal(request, "Application-service login")
    return await request.app[FORWARDER].forward(request, request[IDENTITY], body=bytes(body))


def add_routes(app: web.Application) -> None:
    """Catch-alls go last: the bridge's own routes are registered before them."""
    router = app.router
    router.add_post(r"/_matrix/client/{version}/login", login, name=FORWARDED_ROUTE + "login")
    for prefix, name in (
        ("/_matrix/client", "client"),
        ("/_matrix/media", "media"),
        ("/_synapse/admin", "admin"),
    ):
        router.add_route("*", prefix + "/{tail:.*}", forward, name=FORWARDED_ROUTE + name)
