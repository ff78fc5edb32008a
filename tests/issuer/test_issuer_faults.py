"""Issuer faults through the bridge, in introspection and JWT modes (a fake issuer).

Every fault (timeout, 500, 429, connection refused, invalid JSON, a discovery
document naming another issuer) must give an uncached token 503 with
``Retry-After`` (never a 401, which logs users out), leave cached tokens
working (past ``max_ttl`` too, until their ``exp``: stale-if-error), and heal
without a restart. A flood of garbage tokens keeps the issuer at the in-flight
limit and the bridge responsive for cached tokens.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from bridge.errors import IssuerUnavailable
from bridge.issuer import metadata as metadata_module
from bridge.issuer.http import IssuerHTTP
from bridge.issuer.limit import InflightLimit
from bridge.issuer.metadata import IssuerMetadata
from bridge.ops.metrics import Metrics
from bridge.runtime.clock import SYSTEM_CLOCK, Clock
from bridge.state import ISSUER_METADATA
from tests.fakes import (
    BridgeClient,
    FakeHomeserver,
    FakeIssuer,
    Fault,
    active_claims,
    bearer,
    bridge_config,
    start_bridge,
)
from tests.support.clock import FakeClock

WHOAMI = "/_matrix/client/v3/account/whoami"
TIMEOUT = 0.3
COOLDOWN = 0.5
MAX_TTL = 1.0

MakeBridge = Callable[..., Awaitable[BridgeClient]]


class Issuer:
    """The fake issuer behind a server that can be stopped and started on its port."""

    def __init__(self, fake: FakeIssuer, server: TestServer, serve: AiohttpServer) -> None:
        self.fake = fake
        self.server = server
        self._serve = serve
        assert server.port is not None
        self._port: int = server.port

    async def stop(self) -> None:
        await self.server.close()  # (which forgets the port)

    async def start(self) -> None:
        self.server = await self._serve(self.fake.app(), port=self._port)


@pytest.fixture
async def issuer(aiohttp_server: AiohttpServer) -> Issuer:
    fake = FakeIssuer()
    server = await aiohttp_server(fake.app())
    fake.url = str(server.make_url("/"))
    fake.tokens["cached"] = active_claims("alice", "DEVA")
    fake.tokens["fresh"] = active_claims("bob", "DEVB")
    return Issuer(fake, server, aiohttp_server)


@pytest.fixture
def make_bridge(
    aiohttp_client: AiohttpClient, issuer: Issuer, homeserver: FakeHomeserver
) -> MakeBridge:
    async def make(
        validation: str, *overrides: Mapping[str, Any], clock: Clock = SYSTEM_CLOCK
    ) -> BridgeClient:
        config = bridge_config(
            issuer.fake.url,
            homeserver.url,
            {
                "issuer": {
                    "validation": validation,
                    "timeout": TIMEOUT,
                    "jwt": {"jwks_refetch_cooldown": COOLDOWN},
                },
                "token_cache": {"max_ttl": MAX_TTL},
            },
            *overrides,
        )
        return await start_bridge(aiohttp_client, config, clock=clock)

    return make


async def status(bridge: BridgeClient, token: str) -> int:
    resp = await bridge.get(WHOAMI, headers=bearer(token))
    if resp.status == 503:
        assert (await resp.json())["errcode"] == "M_UNKNOWN"
        assert int(resp.headers["Retry-After"]) >= 1
    return resp.status


FAULTS = {
    "timeout": Fault.json({"active": True}, delay=TIMEOUT * 3),
    "500": Fault.json({"error": "server_error"}, status=500),
    "429": Fault.json({"error": "slow_down"}, status=429, headers={"Retry-After": "7"}),
    "invalid-json": Fault(body=b"{not json", content_type="application/json"),
}


# ---------------------------------------------------------------------------------------
# Introspection


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_introspection_fault(
    make_bridge: MakeBridge, issuer: Issuer, homeserver: FakeHomeserver, fault: str
) -> None:
    # The fake issuer dates its tokens by the real clock: the bridge's starts there.
    clock = FakeClock(time.time())
    bridge = await make_bridge("introspection", clock=clock)
    assert await status(bridge, "cached") == 200
    issuer.fake.fault = FAULTS[fault]

    resp = await bridge.get(WHOAMI, headers=bearer("fresh"))
    assert resp.status == 503
    if fault == "429":
        assert resp.headers["Retry-After"] == "7"  # the issuer's own, passed on
    assert await status(bridge, "cached") == 200  # fresh in the cache
    clock.advance(MAX_TTL + 0.1)
    assert await status(bridge, "cached") == 200  # stale, served while the issuer fails
    assert await status(bridge, "fresh") == 503  # still not cached as invalid

    issuer.fake.fault = None
    assert await status(bridge, "fresh") == 200
    forwarded = {r.query["user_id"] for r in homeserver.client_requests}
    assert forwarded == {"@alice:example.test", "@bob:example.test"}


async def test_introspection_connection_refused_then_recovery(
    make_bridge: MakeBridge, issuer: Issuer
) -> None:
    clock = FakeClock(time.time())
    bridge = await make_bridge("introspection", clock=clock)
    assert await status(bridge, "cached") == 200
    await issuer.stop()
    assert await status(bridge, "fresh") == 503
    assert await status(bridge, "cached") == 200
    clock.advance(MAX_TTL + 0.1)
    assert await status(bridge, "cached") == 200
    await issuer.start()
    clock.advance(5.1)  # the stale session's Retry-After, then it is asked about again
    assert await status(bridge, "fresh") == 200
    assert await status(bridge, "cached") == 200


async def test_stale_if_error_off_means_503_once_max_ttl_passed(
    make_bridge: MakeBridge, issuer: Issuer
) -> None:
    clock = FakeClock(time.time())
    bridge = await make_bridge(
        "introspection", {"token_cache": {"stale_if_error": False}}, clock=clock
    )
    assert await status(bridge, "cached") == 200
    issuer.fake.fault = FAULTS["500"]
    clock.advance(MAX_TTL + 0.1)
    assert await status(bridge, "cached") == 503


async def test_a_cached_session_is_never_served_past_its_exp(
    make_bridge: MakeBridge, issuer: Issuer
) -> None:
    clock = FakeClock(time.time())
    issuer.fake.tokens["short"] = active_claims("carol", "DEVC", exp=int(clock.time()) + 2)
    bridge = await make_bridge("introspection", {"token_cache": {"max_ttl": 60}}, clock=clock)
    assert await status(bridge, "short") == 200
    issuer.fake.fault = FAULTS["500"]
    clock.advance(2.2)
    assert await status(bridge, "short") == 503


async def test_discovery_naming_another_issuer_later(
    make_bridge: MakeBridge, issuer: Issuer
) -> None:
    """A refresh that finds the document naming another issuer stops trusting it:
    uncached tokens 503, cached ones work, and it heals once the document is right."""
    bridge = await make_bridge("introspection")
    assert await status(bridge, "cached") == 200
    issuer.fake.discovery_issuer = "https://evil.example/"
    metadata = bridge.app[ISSUER_METADATA]
    with pytest.raises(Exception, match="names issuer"):
        await metadata.fetch()
    assert await status(bridge, "fresh") == 503
    assert await status(bridge, "cached") == 200
    # The next refresh that finds the right document heals it.
    issuer.fake.discovery_issuer = None
    await metadata.fetch()
    assert await status(bridge, "fresh") == 200


# ---------------------------------------------------------------------------------------
# JWT


JWT_FAULTS = {
    "timeout": Fault.json({"keys": []}, delay=TIMEOUT * 3),
    "500": Fault.json({"error": "server_error"}, status=500),
    "429": Fault.json({}, status=429, headers={"Retry-After": "7"}),
    "invalid-json": Fault(body=b"{not json", content_type="application/json"),
}


@pytest.mark.parametrize("fault", list(JWT_FAULTS))
async def test_jwks_fault(make_bridge: MakeBridge, issuer: Issuer, fault: str) -> None:
    bridge = await make_bridge("jwt")
    fake = issuer.fake
    cached = fake.sign()
    assert await status(bridge, cached) == 200
    fake.jwks_fault = JWT_FAULTS[fault]
    fake.rotate("RS256")
    rotated = fake.sign()  # signed with a key the bridge has not seen
    assert await status(bridge, rotated) == 503
    assert await status(bridge, cached) == 200
    # Tokens of keys already held need no issuer at all.
    assert await status(bridge, fake.sign(alg="ES256")) == 200

    fake.jwks_fault = None
    await asyncio.sleep(COOLDOWN + 0.1)
    assert await status(bridge, rotated) == 200
    assert fake.introspections == []


async def test_jwks_connection_refused_then_recovery(
    make_bridge: MakeBridge, issuer: Issuer
) -> None:
    bridge = await make_bridge("jwt")
    fake = issuer.fake
    assert await status(bridge, fake.sign()) == 200
    await issuer.stop()
    fake.rotate("ES256")
    rotated = fake.sign(alg="ES256")
    assert await status(bridge, rotated) == 503
    assert await status(bridge, fake.sign(alg="RS256")) == 200  # a held key: no issuer needed
    await issuer.start()
    await asyncio.sleep(COOLDOWN + 0.1)
    assert await status(bridge, rotated) == 200


async def test_jwt_discovery_naming_another_issuer(make_bridge: MakeBridge, issuer: Issuer) -> None:
    bridge = await make_bridge("jwt")
    fake = issuer.fake
    cached = fake.sign()
    assert await status(bridge, cached) == 200
    fake.discovery_issuer = fake.url.rstrip("/")
    metadata = bridge.app[ISSUER_METADATA]
    with pytest.raises(Exception, match="names issuer"):
        await metadata.fetch()
    assert await status(bridge, fake.sign()) == 503  # a held key, but no trusted issuer
    assert await status(bridge, cached) == 200
    fake.discovery_issuer = None
    await metadata.fetch()
    assert await status(bridge, fake.sign()) == 200


# ---------------------------------------------------------------------------------------
# Garbage flood


async def test_10000_garbage_tokens_at_concurrency_200(
    make_bridge: MakeBridge, issuer: Issuer, homeserver: FakeHomeserver
) -> None:
    """Issuer calls stay within the in-flight limit; cached tokens stay served quickly.
    (bench/auth.py measures the cached tokens' p99 during such a flood.)"""
    limit = 16
    bridge = await make_bridge("introspection", {"issuer": {"max_inflight": limit}})
    fake = issuer.fake
    assert await status(bridge, "cached") == 200
    fake.introspection_delay = 0.005
    garbage = iter(range(10_000))
    statuses: dict[int, int] = {}
    cached_latencies: list[float] = []

    async def flood() -> None:
        for n in garbage:
            resp = await bridge.get(WHOAMI, headers=bearer(f"garbage-{n}"))
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
            resp.release()

    async def probe(done: asyncio.Event) -> None:
        # A connection pool of its own: the test client's is full of the flood.
        async with aiohttp.ClientSession() as session:
            while not done.is_set():
                started = time.perf_counter()
                async with session.get(bridge.make_url(WHOAMI), headers=bearer("cached")) as r:
                    assert r.status == 200
                cached_latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.01)

    done = asyncio.Event()
    flood_started = time.monotonic()
    prober = asyncio.create_task(probe(done))
    await asyncio.gather(*(flood() for _ in range(200)))
    done.set()
    await prober

    assert sum(statuses.values()) == 10_000
    assert set(statuses) <= {401, 503}
    assert 0 < fake.max_introspecting <= limit
    # Every refusal was the issuer's (the 503s: beyond the bound, or past the issuer
    # timeout on this busy loop), and no garbage token was asked about twice. The
    # cached token is asked again each time its entry outlives MAX_TTL, no more.
    asked = [r.form["token"] for r in fake.introspections]
    garbage_asked = [token for token in asked if token != "cached"]
    assert len(garbage_asked) >= statuses[401]
    assert len(set(garbage_asked)) == len(garbage_asked)
    assert asked.count("cached") <= 1 + (time.monotonic() - flood_started) / MAX_TTL + 1
    assert cached_latencies
    # Generous: the flood, the bridge and both fakes share this one event loop.
    assert statistics.median(cached_latencies) < 1.0
    assert {r.query["user_id"] for r in homeserver.client_requests} == {"@alice:example.test"}


@pytest.mark.parametrize("validation", ["introspection", "jwt"])
async def test_a_slow_discovery_document_is_given_up_after_issuer_timeout(
    make_bridge: MakeBridge, issuer: Issuer, validation: str
) -> None:
    issuer.fake.discovery_delay = TIMEOUT * 4
    started = time.monotonic()
    bridge = await make_bridge(validation)
    assert time.monotonic() - started < TIMEOUT * 3  # the bridge did not wait for it
    token = "fresh" if validation == "introspection" else issuer.fake.sign()
    assert await status(bridge, token) == 503
    assert issuer.fake.introspections == []
    assert issuer.fake.jwks_requests == 0


async def test_metadata_is_retried_quickly_while_not_trusted(
    issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metadata_module, "_RETRY_UNLOADED", 0.05)
    issuer.fake.discovery_issuer = "https://evil.example/"
    config = bridge_config(issuer.fake.url, "http://127.0.0.1:9")
    async with aiohttp.ClientSession() as session:
        http = IssuerHTTP(session, InflightLimit(8), Metrics(), SYSTEM_CLOCK, config.issuer.timeout)
        metadata = IssuerMetadata(http, config.issuer)
        with pytest.raises(IssuerUnavailable):
            await metadata.fetch()
        task = asyncio.create_task(metadata.refresh_forever())
        try:
            await asyncio.sleep(0.2)
            assert metadata.current is None
            issuer.fake.discovery_issuer = None
            for _ in range(40):
                if metadata.current is not None:
                    break
                await asyncio.sleep(0.05)
            assert metadata.current is not None
        finally:
            task.cancel()
