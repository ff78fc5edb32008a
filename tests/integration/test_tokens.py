"""Token failures and the token cache, against the real issuer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.integration.conftest import BridgeClient, Login, MakeBridge, auth, new_localpart
from tests.support.issuer import TestIssuer, start_issuer

WHOAMI = "/_matrix/client/v3/account/whoami"


async def test_garbage_token_is_unknown(bridge: BridgeClient) -> None:
    resp = await bridge.get(WHOAMI, headers=auth("not-a-real-token"))
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"


async def test_missing_token(bridge: BridgeClient) -> None:
    resp = await bridge.get(WHOAMI)
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_MISSING_TOKEN"


async def test_public_endpoint_needs_no_token(bridge: BridgeClient) -> None:
    resp = await bridge.get("/_matrix/client/versions")
    assert resp.status == 200
    assert "versions" in await resp.json()


async def test_fifty_concurrent_requests_one_introspection(
    bridge: BridgeClient, login: Login, issuer: TestIssuer
) -> None:
    token = await login(new_localpart("alice"), "DEVA")
    issuer.reset_counters()
    responses = await asyncio.gather(*(bridge.get(WHOAMI, headers=auth(token)) for _ in range(50)))
    assert [r.status for r in responses] == [200] * 50
    assert issuer.introspection_count() == 1
    # Later requests are answered from the cache as well.
    assert (await bridge.get(WHOAMI, headers=auth(token))).status == 200
    assert issuer.introspection_count() == 1


@pytest.fixture
def own_issuer() -> Iterator[TestIssuer]:
    """An issuer this test may stop without disturbing the others."""
    running = start_issuer()
    yield running
    running.stop()


async def test_issuer_down_cached_token_works_new_token_503(
    make_bridge: MakeBridge, login: Login, own_issuer: TestIssuer
) -> None:
    bridge = await make_bridge(own_issuer)
    cached = await login(new_localpart("alice"), "DEVA", on_issuer=own_issuer)
    fresh = await login(new_localpart("bob"), "DEVB", on_issuer=own_issuer)
    assert (await bridge.get(WHOAMI, headers=auth(cached))).status == 200

    own_issuer.stop()

    resp = await bridge.get(WHOAMI, headers=auth(cached))
    assert resp.status == 200, await resp.text()
    resp = await bridge.get(WHOAMI, headers=auth(fresh))
    assert resp.status == 503
    assert (await resp.json())["errcode"] == "M_UNKNOWN"
    assert int(resp.headers["Retry-After"]) > 0
    # Still unavailable, not cached as invalid: a retry asks the issuer again.
    resp = await bridge.get(WHOAMI, headers=auth(fresh))
    assert resp.status == 503


async def test_cached_token_expires_with_the_token(make_bridge: MakeBridge, login: Login) -> None:
    short_lived = start_issuer(access_token_ttl=2)
    try:
        # The configured cache maximum (300 s) is far longer than the token's life.
        bridge = await make_bridge(short_lived)
        token = await login(new_localpart("alice"), "DEVA", on_issuer=short_lived)
        assert (await bridge.get(WHOAMI, headers=auth(token))).status == 200
        await asyncio.sleep(3)
        resp = await bridge.get(WHOAMI, headers=auth(token))
        assert resp.status == 401
        assert (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"
    finally:
        short_lived.stop()
