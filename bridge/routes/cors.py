"""CORS as the Matrix spec asks of every client-server endpoint."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization",
}


@web.middleware
async def preflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer preflight requests here: they carry no token and need no homeserver."""
    if request.method == "OPTIONS":
        return web.Response(status=204)
    return await handler(request)


async def add_cors_headers(_request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every answer, bridge-made or forwarded, gets CORS headers."""
    for name, value in CORS_HEADERS.items():
        response.headers.setdefault(name, value)
