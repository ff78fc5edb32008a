"""The bench's OAuth issuer: discovery, and introspection that finds every token active.

    python bench/issuer.py PORT

Claims as the bridge wants them (tests/fakes.py ``active_claims``): the client-API
scope and one device scope, the localpart in ``username``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from aiohttp import web
from harness import DEVICE_ID, HOST, USERNAME


def discovery(url: str) -> dict[str, Any]:
    """The discovery document of the issuer at ``url``."""
    return {
        "issuer": url,
        "authorization_endpoint": url + "oauth2/authorize",
        "token_endpoint": url + "oauth2/token",
        "introspection_endpoint": url + "oauth2/introspect",
        "response_types_supported": ["code"],
    }


def active() -> dict[str, Any]:
    """An introspection answer: the token is active for the bench's user and device."""
    return {
        "active": True,
        "scope": f"urn:matrix:client:api:* urn:matrix:client:device:{DEVICE_ID}",
        "username": USERNAME,
        "token_type": "Bearer",
        "exp": int(time.time()) + 3600,
    }


def app(url: str) -> web.Application:
    async def discover(_request: web.Request) -> web.Response:
        return web.json_response(discovery(url))

    async def introspect(request: web.Request) -> web.Response:
        await request.post()
        return web.json_response(active())

    application = web.Application()
    application.router.add_get("/.well-known/openid-configuration", discover)
    application.router.add_post("/oauth2/introspect", introspect)
    return application


if __name__ == "__main__":
    port = int(sys.argv[1])
    web.run_app(app(f"http://{HOST}:{port}/"), host=HOST, port=port, print=None)
