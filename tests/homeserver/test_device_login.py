"""The device_login strategy against the fake homeserver: one login, kept, healed, ended."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.fernet import Fernet
from pytest_aiohttp import AiohttpClient, AiohttpServer

from bridge.app import create_app
from bridge.auth.identity import DeviceID, Identity, UserID
from bridge.config import BridgeConfig
from bridge.homeserver.appservice import AppserviceClient
from bridge.homeserver.device_login import DeviceLogin
from bridge.store import open_store
from tests.fakes import (
    SERVER_NAME,
    BridgeClient,
    FakeHomeserver,
    FakeIssuer,
    active_claims,
    bridge_config,
    json_answer,
    start_bridge,
)

TOKEN = "alice-oauth-token"
WHOAMI = "/_matrix/client/v3/account/whoami"
ALICE = Identity(UserID(f"@alice:{SERVER_NAME}"), DeviceID("DEVA"), "alice")


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def issuer(aiohttp_server: AiohttpServer) -> FakeIssuer:
    issuer = await FakeIssuer.start(aiohttp_server)
    issuer.tokens[TOKEN] = active_claims("alice", "DEVA")
    return issuer


@pytest.fixture
def config(issuer: FakeIssuer, homeserver: FakeHomeserver, tmp_path: Path) -> BridgeConfig:
    return bridge_config(
        issuer.url,
        homeserver.url,
        {
            "homeserver": {"strategy": "device_login"},
            "store": {
                "path": str(tmp_path / "bridge.db"),
                "encryption_keys": [Fernet.generate_key().decode()],
            },
        },
    )


@pytest.fixture
async def bridge(aiohttp_client: AiohttpClient, config: BridgeConfig) -> BridgeClient:
    return await start_bridge(aiohttp_client, config)


async def test_requests_carry_the_device_token_and_nothing_else(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    resp = await bridge.put(
        "/_matrix/client/v3/rooms/!r:x/send/m.room.message/client-txn?user_id=@bob:x&ts=5",
        headers=bearer(),
        json={"body": "hi"},
    )
    assert resp.status == 200
    [register] = homeserver.of_kind("register")
    [login] = homeserver.of_kind("login")
    assert homeserver.requests.index(register) < homeserver.requests.index(login)
    [token] = homeserver.device_tokens
    assert homeserver.device_tokens[token] == ("alice", "DEVA")
    [sent] = homeserver.client_requests
    assert sent.headers["Authorization"] == f"Bearer {token}"
    # The client's own transaction ID and parameters pass through: a normal
    # user's token makes user_id and ts meaningless to the homeserver.
    assert sent.raw_path.endswith("/send/m.room.message/client-txn")
    assert sent.query.getall("user_id") == ["@bob:x"]
    assert sent.query.getall("ts") == ["5"]
    assert "device_id" not in sent.query


async def test_concurrent_first_requests_log_in_once(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    homeserver.login_delay = 0.1
    statuses = await asyncio.gather(
        *(_status(bridge.get(WHOAMI, headers=bearer())) for _ in range(20))
    )
    assert statuses == [200] * 20
    assert len(homeserver.of_kind("login")) == 1


async def _status(request: Awaitable[aiohttp.ClientResponse]) -> int:
    resp = await request
    return resp.status


async def test_a_restarted_bridge_reuses_the_kept_token(
    config: BridgeConfig, homeserver: FakeHomeserver
) -> None:
    for _ in range(2):
        async with TestClient(TestServer(create_app(config))) as client:
            assert (await client.get(WHOAMI, headers=bearer())).status == 200
    assert len(homeserver.of_kind("login")) == 1
    tokens = {r.headers["Authorization"] for r in homeserver.client_requests}
    assert len(tokens) == 1


async def test_a_kept_token_no_configured_key_reads_is_a_clear_503(
    config: BridgeConfig, homeserver: FakeHomeserver, caplog: pytest.LogCaptureFixture
) -> None:
    assert config.store is not None
    key_a = config.store.encryption_keys[0]
    other_keys = config.store.model_copy(
        update={"encryption_keys": (Fernet.generate_key().decode(), key_a)}
    )
    # The store is made with key A; another instance, sealing with its own first
    # key, then keeps alice's device token; this one cannot read it.
    async with TestClient(TestServer(create_app(config))):
        pass
    async with TestClient(
        TestServer(create_app(config.model_copy(update={"store": other_keys})))
    ) as other:
        assert (await other.get(WHOAMI, headers=bearer())).status == 200
    async with TestClient(TestServer(create_app(config))) as client:
        resp = await client.get(WHOAMI, headers=bearer())
        assert resp.status == 503
        answer = await resp.json()
    assert answer["errcode"] == "M_UNKNOWN"
    assert "administrator" in answer["error"]
    assert "store.encryption_keys: cannot decrypt the store" in caplog.text
    assert "Traceback" not in caplog.text


async def test_a_token_the_homeserver_forgot_is_replaced_and_the_request_retried(
    bridge: BridgeClient, homeserver: FakeHomeserver, config: BridgeConfig
) -> None:
    assert (await bridge.get(WHOAMI, headers=bearer())).status == 200
    first = homeserver.client_requests[0].headers["Authorization"]
    forgotten = json_answer(401, {"errcode": "M_UNKNOWN_TOKEN", "error": "Unknown token"})
    homeserver.answer = _once(forgotten, json_answer(200, {"ok": True}))
    resp = await bridge.post("/_matrix/client/v3/keys/query", headers=bearer(), json={"a": 1})
    assert resp.status == 200
    assert len(homeserver.of_kind("login")) == 2
    failed, retried = homeserver.client_requests[-2:]
    assert failed.headers["Authorization"] == first
    assert retried.headers["Authorization"] != first
    assert retried.body == failed.body
    # The store holds the new token, not the refused one.
    assert config.store is not None
    store = await open_store(config.store)
    try:
        kept = await store.device_token(ALICE.user_id, ALICE.device_id)
    finally:
        await store.close()
    assert retried.headers["Authorization"] == f"Bearer {kept}"


async def test_the_client_never_sees_the_homeservers_401(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    homeserver.answer = json_answer(401, {"errcode": "M_UNKNOWN_TOKEN"})
    resp = await bridge.get(WHOAMI, headers=bearer())
    assert resp.status == 502  # a 401 would log the client out for the bridge's problem
    assert len(homeserver.of_kind("login")) == 2  # healed once, never in a loop


async def test_rate_limited_logins_are_tried_again(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    homeserver.login_refusals = [(429, "M_LIMIT_EXCEEDED")] * 2
    assert (await bridge.get(WHOAMI, headers=bearer())).status == 200
    assert len(homeserver.of_kind("login")) == 3


async def test_a_refused_login_is_502_and_not_kept(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    homeserver.login_refusals = [(403, "M_FORBIDDEN")]
    resp = await bridge.get(WHOAMI, headers=bearer())
    assert resp.status == 502
    assert (await resp.json())["errcode"] == "M_UNKNOWN"
    assert (await bridge.get(WHOAMI, headers=bearer())).status == 200


async def test_ending_a_device_logs_its_token_out_and_forgets_it(
    config: BridgeConfig, homeserver: FakeHomeserver
) -> None:
    assert config.store is not None
    store = await open_store(config.store)
    try:
        async with aiohttp.ClientSession() as session:
            strategy = DeviceLogin(AppserviceClient(session, config), store, config)
            await strategy.prepare(ALICE)
            [token] = homeserver.device_tokens
            assert strategy.credentials(ALICE) == (f"Bearer {token}", [])
            await strategy.end_device(ALICE)
            assert homeserver.device_tokens == {}
            assert [r.headers["Authorization"] for r in homeserver.of_kind("logout")] == [
                f"Bearer {token}"
            ]
            assert await store.device_token(ALICE.user_id, ALICE.device_id) is None
            await strategy.prepare(ALICE)  # a new session logs in again
            assert len(homeserver.of_kind("login")) == 2
    finally:
        await store.close()


def _once(first: Callable[..., Awaitable[Any]], then: Callable[..., Awaitable[Any]]) -> Any:
    used = False

    async def answer(request: Any) -> Any:
        nonlocal used
        if not used:
            used = True
            return await first(request)
        return await then(request)

    return answer


@pytest.mark.parametrize(
    ("errcode", "status"), [("M_USER_DEACTIVATED", 403), ("M_USER_LOCKED", 401)]
)
async def test_a_login_refused_for_the_accounts_state_says_so(
    bridge: BridgeClient, homeserver: FakeHomeserver, errcode: str, status: int
) -> None:
    homeserver.login_refusals = [(403, errcode)]
    resp = await bridge.get(WHOAMI, headers=bearer())
    assert resp.status == status
    assert (await resp.json())["errcode"] == errcode
