"""Tokens without a device scope: forwarded as the user alone, under either strategy.

What the recording fake homeserver gets: under ``masquerade`` the appservice token
with ``user_id`` and no ``device_id``; under ``device_login`` (no device to log in)
the same, through the appservice, never a device login. Under both, the client's own
identity parameters are stripped and transaction IDs get the user's tag.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pytest_aiohttp import AiohttpClient, AiohttpServer

from tests.fakes import (
    AS_TOKEN,
    BridgeClient,
    FakeHomeserver,
    FakeIssuer,
    active_claims,
    bridge_config,
    start_bridge,
)

V3 = "/_matrix/client/v3"
NO_DEVICE = "token-without-device"
TWO_DEVICES = "token-with-two-devices"

MakeBridge = Callable[[str], Awaitable[BridgeClient]]


@pytest.fixture
async def issuer(aiohttp_server: AiohttpServer) -> FakeIssuer:
    issuer = await FakeIssuer.start(aiohttp_server)
    issuer.tokens[NO_DEVICE] = {**active_claims("alice"), "scope": "urn:matrix:client:api:*"}
    issuer.tokens[TWO_DEVICES] = {
        **active_claims("alice"),
        "scope": "urn:matrix:client:api:* urn:matrix:client:device:A urn:matrix:client:device:B",
    }
    return issuer


@pytest.fixture
def make_bridge(
    aiohttp_client: AiohttpClient, issuer: FakeIssuer, homeserver: FakeHomeserver, tmp_path: Path
) -> MakeBridge:
    async def make(strategy: str) -> BridgeClient:
        overrides: dict[str, Any] = {"homeserver": {"strategy": strategy}}
        if strategy == "device_login":
            overrides["store"] = {
                "path": str(tmp_path / "bridge.db"),
                "encryption_keys": [Fernet.generate_key().decode()],
            }
        return await start_bridge(
            aiohttp_client, bridge_config(issuer.url, homeserver.url, overrides)
        )

    return make


@pytest.mark.parametrize("strategy", ["masquerade", "device_login"])
async def test_forwarded_as_the_user_without_a_device(
    make_bridge: MakeBridge, homeserver: FakeHomeserver, strategy: str
) -> None:
    bridge = await make_bridge(strategy)
    query = "?user_id=@admin:example.test&device_id=ADMINDEV&org.matrix.msc3202.device_id=X"
    resp = await bridge.get(
        f"{V3}/account/whoami{query}", headers={"Authorization": f"Bearer {NO_DEVICE}"}
    )
    assert resp.status == 200
    (forwarded,) = homeserver.client_requests
    assert forwarded.headers["Authorization"] == f"Bearer {AS_TOKEN}"
    assert forwarded.query.getall("user_id") == ["@alice:example.test"]
    assert "device_id" not in forwarded.query
    assert "org.matrix.msc3202.device_id" not in forwarded.query
    assert homeserver.of_kind("login") == []  # no device was logged in
    assert homeserver.of_kind("device") == []  # nor created
    assert len(homeserver.of_kind("register")) == 1


@pytest.mark.parametrize("strategy", ["masquerade", "device_login"])
async def test_transaction_ids_get_the_users_tag(
    make_bridge: MakeBridge, homeserver: FakeHomeserver, strategy: str
) -> None:
    bridge = await make_bridge(strategy)
    path = f"{V3}/rooms/%21r%3Aexample.test/send/m.room.message/txn1"
    resp = await bridge.put(path, json={}, headers={"Authorization": f"Bearer {NO_DEVICE}"})
    assert resp.status == 200
    (forwarded,) = homeserver.client_requests
    assert forwarded.raw_path.endswith("txn1")
    assert forwarded.raw_path != path  # the tag went in front of the client's ID
    assert forwarded.raw_path.rsplit("/", 1)[1] != "txn1"


async def test_two_device_scopes_are_refused(
    make_bridge: MakeBridge, homeserver: FakeHomeserver
) -> None:
    bridge = await make_bridge("masquerade")
    resp = await bridge.get(
        f"{V3}/account/whoami", headers={"Authorization": f"Bearer {TWO_DEVICES}"}
    )
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"
    assert homeserver.requests == []
