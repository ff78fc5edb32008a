"""The ops face, on a listener of its own (``ops.host``/``ops.port``), never the public one.

- ``GET /metrics``: Prometheus' text exposition (:mod:`bridge.ops.metrics`); with
  several workers, the sum of all of them.
- ``GET /health``: 200 while the process runs its event loop (liveness).
- ``GET /ready``: 200 when the bridge can serve, else 503 (readiness); the
  JSON body lists each check and its state:

  - ``issuer``: the discovery document is loaded and fresh (fetched within two
    refresh intervals), by every worker when there are several (whichever
    worker answers, it reads the others' fetch times from the metrics'
    multiprocess directory: a load balancer must not send traffic to an
    instance one of whose workers would answer 503);
  - ``homeserver``: ``GET /_matrix/client/versions`` answers 200 (within two
    seconds);
  - ``store`` (when there is one): the database answers.

The ops application reads the client-facing application's state (its
issuer metadata, store and metrics) and adds nothing to the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from bridge import USER_AGENT
from bridge.ops.metrics import exposition, stalest_issuer_fetch
from bridge.state import CONFIG, ISSUER_METADATA, METRICS, STORE

BRIDGE = web.AppKey("bridge", web.Application)
_SESSION = web.AppKey("session", aiohttp.ClientSession)
# Seconds a readiness check may take.
CHECK_TIMEOUT = 2.0


async def metrics(request: web.Request) -> web.Response:
    body, content_type = exposition(request.app[BRIDGE][METRICS])
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"alive": True})


async def ready(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    checks: dict[str, dict[str, Any]] = {}
    names = ["issuer", "homeserver"] + (["store"] if STORE in bridge else [])
    results = await asyncio.gather(
        _issuer(bridge), _homeserver(bridge, request.app[_SESSION]), _store(bridge)
    )
    for name, (ok, detail) in zip(names, results, strict=False):
        checks[name] = {"ok": ok, "detail": detail}
    is_ready = all(check["ok"] for check in checks.values())
    return web.json_response({"ready": is_ready, "checks": checks}, status=200 if is_ready else 503)


async def _issuer(bridge: web.Application) -> tuple[bool, str]:
    metadata = bridge.get(ISSUER_METADATA)
    if metadata is None or metadata.current is None:
        return False, "the issuer's discovery document is not loaded yet"
    age = metadata.age() or 0.0
    if not metadata.fresh():
        return False, f"the issuer's discovery document is stale ({age:.0f}s old)"
    stalest = stalest_issuer_fetch()
    if stalest is not None:
        oldest = time.time() - stalest
        if oldest > metadata.max_age():
            if stalest == 0:
                return False, "a worker has not loaded the issuer's discovery document yet"
            return False, f"a worker's discovery document is stale ({oldest:.0f}s old)"
        return True, f"every worker's discovery document fetched within {oldest:.0f}s"
    return True, f"discovery document fetched {age:.0f}s ago"


async def _homeserver(bridge: web.Application, session: aiohttp.ClientSession) -> tuple[bool, str]:
    url = bridge[CONFIG].homeserver.url + "/_matrix/client/versions"
    try:
        async with session.get(url, allow_redirects=False) as resp:
            if resp.status == 200:
                return True, "versions answered 200"
            return False, f"versions answered HTTP {resp.status}"
    except (aiohttp.ClientError, TimeoutError) as e:
        return False, f"unreachable ({type(e).__name__})"


async def _store(bridge: web.Application) -> tuple[bool, str]:
    store = bridge.get(STORE)
    if store is None:
        return True, "no store"
    try:
        await asyncio.wait_for(store.ping(), CHECK_TIMEOUT)
    except Exception as e:
        return False, f"the store does not answer ({type(e).__name__})"
    return True, "the store answers"


async def _client_session(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": USER_AGENT},
        timeout=aiohttp.ClientTimeout(total=CHECK_TIMEOUT),
    ) as session:
        app[_SESSION] = session
        yield


def create_ops_app(bridge: web.Application) -> web.Application:
    """The ops application for the client-facing application ``bridge``."""
    app = web.Application()
    app[BRIDGE] = bridge
    app.cleanup_ctx.append(_client_session)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    return app


@contextlib.asynccontextmanager
async def serving_ops(
    bridge: web.Application, sockets: list[Any] | None, host: str, port: int
) -> AsyncIterator[web.AppRunner]:
    """Serve the ops application (on ``sockets``, or ``host``:``port``) while inside."""
    runner = web.AppRunner(create_ops_app(bridge), access_log=None)
    await runner.setup()
    try:
        if sockets:
            for sock in sockets:
                await web.SockSite(runner, sock).start()
        else:
            await web.TCPSite(runner, host, port).start()
        yield runner
    finally:
        await runner.cleanup()
