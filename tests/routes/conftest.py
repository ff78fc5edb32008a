"""A bridge between the fake issuer and the fake homeserver, for the route tests: once
per issuer kind, since the closed doors and capabilities are Synapse's MAS-mode ones
whatever the issuer."""

from __future__ import annotations

import pytest
from pytest_aiohttp import AiohttpClient, AiohttpServer

from tests.fakes import (
    BridgeClient,
    FakeHomeserver,
    FakeIssuer,
    active_claims,
    bridge_config,
    start_bridge,
)

# Alice's valid token at the fake issuer.
ALICE = "alice-token"


@pytest.fixture
async def issuer(aiohttp_server: AiohttpServer) -> FakeIssuer:
    issuer = await FakeIssuer.start(aiohttp_server)
    issuer.tokens[ALICE] = active_claims("alice", "DEVA")
    return issuer


# issuer.kind: mas introspects with MAS's shared secret.
_ISSUER_KINDS = {
    "oidc": {},
    "mas": {"issuer": {"kind": "mas", "introspection": {"auth": "mas_shared_secret"}}},
}


@pytest.fixture(params=sorted(_ISSUER_KINDS))
async def bridge(
    request: pytest.FixtureRequest,
    aiohttp_client: AiohttpClient,
    issuer: FakeIssuer,
    homeserver: FakeHomeserver,
) -> BridgeClient:
    config = bridge_config(issuer.url, homeserver.url, _ISSUER_KINDS[request.param])
    return await start_bridge(aiohttp_client, config)
