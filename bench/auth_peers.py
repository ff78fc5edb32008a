"""The auth bench's peers: an OAuth issuer and a homeserver stand-in, in one process.

    python bench/auth_peers.py ISSUER_PORT HOMESERVER_PORT JWKS_FILE [--delay-ms MS]

Issuer (``http://127.0.0.1:ISSUER_PORT/``): discovery; introspection that finds every
token starting with ``bench-`` active (``@bench:bench.test``, device ``BENCHDEV``) and
any other inactive, each answer after ``--delay-ms`` (as a real issuer takes a moment);
the JWKS, read from JWKS_FILE at every request (the bench rotates keys by rewriting it).
``GET /_bench/counters`` → introspection and JWKS requests, and the most introspections
handled at once; ``POST /_bench/counters/reset``.

Homeserver (``http://127.0.0.1:HOMESERVER_PORT``): what the ``masquerade`` strategy asks
at first sight of a user (register, create the device), and ``whoami``.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from aiohttp import web
from harness import HOST, USER_ID
from issuer import active, discovery

COUNTERS = web.AppKey("counters", dict[str, int])


def issuer_app(url: str, jwks: Path, delay: float) -> web.Application:
    counters = {"introspection": 0, "jwks": 0, "introspection_max_inflight": 0, "inflight": 0}

    async def discover(_request: web.Request) -> web.Response:
        return web.json_response({**discovery(url), "jwks_uri": url + "oauth2/keys"})

    async def introspect(request: web.Request) -> web.Response:
        counters["introspection"] += 1
        counters["inflight"] += 1
        counters["introspection_max_inflight"] = max(
            counters["introspection_max_inflight"], counters["inflight"]
        )
        try:
            token = (await request.post()).get("token")
            await asyncio.sleep(delay)
        finally:
            counters["inflight"] -= 1
        if not isinstance(token, str) or not token.startswith("bench-"):
            return web.json_response({"active": False})
        return web.json_response(active())

    async def keys(_request: web.Request) -> web.Response:
        counters["jwks"] += 1
        body = await asyncio.to_thread(jwks.read_bytes)
        return web.Response(body=body, content_type="application/json")

    async def show(_request: web.Request) -> web.Response:
        return web.json_response({k: v for k, v in counters.items() if k != "inflight"})

    async def reset(_request: web.Request) -> web.Response:
        for key in counters:
            if key != "inflight":
                counters[key] = 0
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", discover)
    app.router.add_post("/oauth2/introspect", introspect)
    app.router.add_get("/oauth2/keys", keys)
    app.router.add_get("/_bench/counters", show)
    app.router.add_post("/_bench/counters/reset", reset)
    return app


def homeserver_app() -> web.Application:
    async def register(_request: web.Request) -> web.Response:
        return web.json_response({"user_id": USER_ID})

    async def whoami(request: web.Request) -> web.Response:
        return web.json_response(
            {"user_id": request.query.get("user_id"), "device_id": request.query.get("device_id")}
        )

    async def anything(_request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/_matrix/client/v3/register", register)
    app.router.add_get("/_matrix/client/v3/account/whoami", whoami)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


async def serve(issuer_port: int, homeserver_port: int, jwks: Path, delay: float) -> None:
    runners = []
    for app, port in (
        (issuer_app(f"http://{HOST}:{issuer_port}/", jwks, delay), issuer_port),
        (homeserver_app(), homeserver_port),
    ):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, HOST, port, backlog=4096).start()
        runners.append(runner)
    try:
        await asyncio.Event().wait()
    finally:
        for runner in runners:
            await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("issuer_port", type=int)
    parser.add_argument("homeserver_port", type=int)
    parser.add_argument("jwks", type=Path)
    parser.add_argument("--delay-ms", type=float, default=2.0)
    args = parser.parse_args()
    asyncio.run(serve(args.issuer_port, args.homeserver_port, args.jwks, args.delay_ms / 1000))
