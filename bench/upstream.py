"""A homeserver stand-in that holds long polls and swallows uploads.

    python bench/upstream.py PORT

- ``GET /_matrix/client/v3/sync?timeout=MS`` waits MS milliseconds (at most 60 s),
  then answers the bench's /sync JSON: nginx cannot hold a request.
- ``POST /_matrix/media/v3/upload`` reads the whole body and answers how many bytes
  came (``received``) and whether they came chunked.
- ``GET /_bench/held`` (asked directly, not through the bridge): how many long
  polls are being held now.
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web
from harness import HOST, SERVER_NAME, SYNC_BODY

HELD = web.AppKey("held", list[int])


async def sync(request: web.Request) -> web.Response:
    try:
        timeout = min(int(request.query.get("timeout", "0")), 60_000) / 1000
    except ValueError:
        timeout = 0.0
    held = request.app[HELD]
    held[0] += 1
    try:
        await asyncio.sleep(timeout)
    finally:
        held[0] -= 1
    return web.Response(body=SYNC_BODY, content_type="application/json")


async def upload(request: web.Request) -> web.Response:
    received = 0
    async for chunk in request.content.iter_any():
        received += len(chunk)
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    return web.json_response(
        {"content_uri": f"mxc://{SERVER_NAME}/upload", "received": received, "chunked": chunked}
    )


async def held(request: web.Request) -> web.Response:
    return web.json_response({"held": request.app[HELD][0]})


if __name__ == "__main__":
    app = web.Application()
    app[HELD] = [0]
    app.router.add_get("/_matrix/client/v3/sync", sync)
    app.router.add_post("/_matrix/media/v3/upload", upload)
    app.router.add_get("/_bench/held", held)
    web.run_app(
        app,
        host=HOST,
        port=int(sys.argv[1]),
        backlog=4096,
        handler_cancellation=True,  # a poll its client gave up on stops being held
        print=None,
        access_log=None,
    )
