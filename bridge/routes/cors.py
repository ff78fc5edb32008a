"""CORS as the Matrix spec asks of every client-server endpoint."""

from __future__ import annotations

from aiohttp import web

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization",
}


async def add_cors_headers(_request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every answer, bridge-made or forwarded, gets CORS headers."""
    for name, value in CORS_HEADERS.items():
        response.headers.setdefault(name, value)
