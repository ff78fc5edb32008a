"""OAuth discovery for clients: ``auth_metadata`` (stable and MSC2965) and ``auth_issuer``."""

from __future__ import annotations

from aiohttp import web

from bridge.state import CONFIG, ISSUER_METADATA


async def auth_metadata(request: web.Request) -> web.Response:
    """The issuer's discovery document, as last fetched, from memory."""
    metadata = request.app[ISSUER_METADATA].require()
    max_age = int(request.app[CONFIG].issuer.metadata_refresh_interval)
    return web.Response(
        body=metadata.serialized,
        content_type="application/json",
        headers={"Cache-Control": f"public, max-age={max_age}"},
    )


async def auth_issuer(request: web.Request) -> web.Response:
    return web.json_response({"issuer": request.app[CONFIG].issuer.issuer})


def add_routes(app: web.Application) -> None:
    unstable = "/_matrix/client/unstable/org.matrix.msc2965"
    app.router.add_get(
        "/_matrix/client/v1/auth_metadata", auth_metadata, name="discovery:auth_metadata"
    )
    app.router.add_get(
        f"{unstable}/auth_metadata", auth_metadata, name="discovery:auth_metadata_msc2965"
    )
    app.router.add_get(f"{unstable}/auth_issuer", auth_issuer, name="discovery:auth_issuer")
