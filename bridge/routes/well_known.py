"""``/.well-known/matrix/client`` and ``/.well-known/matrix/server``."""

from __future__ import annotations

from aiohttp import web

from bridge.errors import NotFound
from bridge.state import CONFIG, ISSUER_METADATA, LIVE


def client_document(request: web.Request) -> dict[str, object]:
    """``/.well-known/matrix/client``'s content (also a login answer's ``well_known``)."""
    config = request.app[CONFIG]
    authentication = {"issuer": config.issuer.issuer}
    account = request.app[ISSUER_METADATA].account_url()
    if account:
        authentication["account"] = account
    return {
        **request.app[LIVE].well_known.client_extra,
        "m.homeserver": {"base_url": config.public_baseurl},
        "m.authentication": authentication,
        "org.matrix.msc2965.authentication": authentication,
    }


async def client_well_known(request: web.Request) -> web.Response:
    return web.json_response(client_document(request))


async def server_well_known(request: web.Request) -> web.Response:
    server = request.app[LIVE].well_known.server
    if server is None:
        raise NotFound("No federation delegation is configured", errcode="M_NOT_FOUND")
    return web.json_response({"m.server": server})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/.well-known/matrix/client", client_well_known, name="well_known:client")
    app.router.add_get("/.well-known/matrix/server", server_well_known, name="well_known:server")
