"""The foundation's end-to-end scenarios, on every (homeserver, strategy) stack.

Each test runs once per pair in ``STACKS``: Synapse with ``masquerade``, Synapse
with ``device_login`` and Dendrite with ``device_login``. A user logs in at the real
issuer (authorization code + PKCE) and acts through the bridge; what matters is then
read from the homeserver itself, not through the bridge: the Synapse admin API, the
homeserver's admin user as a plain client, or (where Dendrite offers no API for it)
Dendrite's own database, opened read-only.

Where Dendrite 0.13.8 differs from the spec or from Synapse, a comment says so and
the test asserts what the bridge guarantees there.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridge.app import create_app
from bridge.config import AppserviceConfig, BridgeConfig
from bridge.store import open_store
from tests.integration.conftest import (
    BridgeClient,
    HomeserverKind,
    Login,
    Stack,
    auth,
    new_localpart,
)
from tests.support.dendrite import DendriteServer
from tests.support.issuer import TestIssuer
from tests.support.stack import SERVER_NAME, bridge_config
from tests.support.synapse import SynapseServer

V3 = "/_matrix/client/v3"
WHOAMI = f"{V3}/account/whoami"
# How long a test waits for something a homeserver delivers asynchronously (Dendrite's
# sync API is fed through its internal message bus, a moment after the write).
DELIVERY_DEADLINE = 10.0


def user_id(localpart: str) -> str:
    return f"@{localpart}:{SERVER_NAME}"


def r(room_id: str) -> str:
    return f"{V3}/rooms/{quote(room_id)}"


# --------------------------------------------------------------------------- the client side


async def call(bridge: BridgeClient, method: str, path: str, token: str, **kw: Any) -> Any:
    """One request through the bridge as the token's user; it has to succeed."""
    resp = await bridge.request(method, path, headers=auth(token), **kw)
    assert resp.status == 200, f"{method} {path}: {resp.status} {await resp.text()}"
    return await resp.json()


async def sync(
    bridge: BridgeClient, token: str, since: str | None = None, timeout_ms: int = 0
) -> Any:
    params = {"timeout": str(timeout_ms)}
    if since is not None:
        params["since"] = since
    return await call(bridge, "GET", f"{V3}/sync", token, params=params)


def timeline(sync_body: Any, room_id: str) -> list[dict[str, Any]]:
    room = sync_body.get("rooms", {}).get("join", {}).get(room_id)
    return [] if room is None else list(room["timeline"]["events"])


async def sync_until_event(
    bridge: BridgeClient, token: str, room_id: str, event_id: str
) -> dict[str, Any]:
    """The event as a fresh /sync shows it in the room's timeline (waiting, briefly, for
    a homeserver that indexes it after answering the send)."""
    deadline = time.monotonic() + DELIVERY_DEADLINE
    while True:
        events = timeline(await sync(bridge, token), room_id)
        found = [e for e in events if e["event_id"] == event_id]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, f"{event_id} not in the /sync timeline: {events}"
            return found[0]
        await asyncio.sleep(0.2)


async def to_device_events(
    bridge: BridgeClient, token: str, since: str, *, at_least: int
) -> list[dict[str, Any]]:
    """The to-device events /sync delivers after ``since``, until ``at_least`` came (or
    the deadline passed)."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + DELIVERY_DEADLINE
    while True:
        body = await sync(bridge, token, since, timeout_ms=0 if at_least == 0 else 1000)
        events += body.get("to_device", {}).get("events", [])
        since = body["next_batch"]
        if len(events) >= at_least or time.monotonic() > deadline:
            return events


async def send_text(bridge: BridgeClient, token: str, room_id: str, txn_id: str, text: str) -> str:
    sent = await call(
        bridge,
        "PUT",
        f"{r(room_id)}/send/m.room.message/{quote(txn_id, safe='')}",
        token,
        json={"msgtype": "m.text", "body": text},
    )
    event_id = sent["event_id"]
    assert isinstance(event_id, str)
    assert event_id.startswith("$")
    return event_id


async def public_room(bridge: BridgeClient, token: str, **body: Any) -> str:
    room = await call(
        bridge, "POST", f"{V3}/createRoom", token, json={"preset": "public_chat", **body}
    )
    room_id = room["room_id"]
    assert isinstance(room_id, str)
    return room_id


# --------------------------------------------------------------------------- the homeserver side


@dataclass
class Homeserver:
    """The stack's homeserver, read directly (never through the bridge)."""

    kind: HomeserverKind
    server: SynapseServer | DendriteServer
    http: aiohttp.ClientSession

    async def as_admin(self, method: str, path: str, body: Any = None) -> Any:
        """A request of the homeserver's admin user, straight to the homeserver."""
        async with self.http.request(
            method, self.server.base_url + path, json=body, headers=auth(self.server.admin_token)
        ) as resp:
            answer = await resp.json()
            assert resp.status == 200, f"{method} {path}: {resp.status} {answer}"
            return answer

    def _dendrite_userapi(self) -> sqlite3.Connection:
        # Dendrite 0.13.8 has no admin API that lists a user's devices or accounts
        # (/_synapse/admin/v2/users/... answers 404 M_UNRECOGNIZED): its own database
        # is the only direct view.
        db = self.server.workdir / "dendrite_userapi.db"
        return sqlite3.connect(f"file:{db}?mode=ro", uri=True)

    async def devices(self, user: str) -> list[str]:
        """The IDs of the user's devices as the homeserver holds them, sorted."""
        if self.kind == "synapse":
            answer = await self.as_admin("GET", f"/_synapse/admin/v2/users/{quote(user)}/devices")
            return sorted(d["device_id"] for d in answer["devices"])
        localpart = user[1:].split(":", 1)[0]
        with closing(self._dendrite_userapi()) as conn:
            rows = conn.execute(
                "SELECT device_id FROM userapi_devices WHERE localpart = ? AND server_name = ?",
                (localpart, SERVER_NAME),
            ).fetchall()
        return sorted(row[0] for row in rows)

    async def is_active_account(self, user: str) -> bool:
        """Whether the account exists and is not deactivated."""
        if self.kind == "synapse":
            path = f"/_synapse/admin/v2/users/{quote(user)}"
            async with self.http.get(
                self.server.base_url + path, headers=auth(self.server.admin_token)
            ) as resp:
                return resp.status == 200 and (await resp.json())["deactivated"] is False
        localpart = user[1:].split(":", 1)[0]
        with closing(self._dendrite_userapi()) as conn:
            row = conn.execute(
                "SELECT is_deactivated FROM userapi_accounts WHERE localpart = ?"
                " AND server_name = ?",
                (localpart, SERVER_NAME),
            ).fetchone()
        return row is not None and not row[0]

    async def admin_joins(self, room_id: str) -> None:
        """The admin joins a public room, to see it as any member would."""
        await self.as_admin("POST", f"{V3}/join/{quote(room_id)}", {})

    async def messages(self, room_id: str, *, until: int) -> list[tuple[str, str]]:
        """(sender, body) of the room's messages as a member sees them, oldest first, once
        there are ``until`` of them (Dendrite feeds /messages through its internal
        message bus, so a read right after sending may come too early), or after 10 s."""
        deadline = time.monotonic() + 10
        while True:
            answer = await self.as_admin("GET", f"{r(room_id)}/messages?dir=b&limit=50")
            found = [
                (e["sender"], e["content"].get("body"))
                for e in reversed(answer["chunk"])
                if e["type"] == "m.room.message"
            ]
            if len(found) >= until or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.1)


@pytest.fixture
def homeserver(
    stack: Stack, request: pytest.FixtureRequest, http: aiohttp.ClientSession
) -> Homeserver:
    server: SynapseServer | DendriteServer = request.getfixturevalue(stack.homeserver)
    return Homeserver(stack.homeserver, server, http)


# --------------------------------------------------------------------------- the scenarios


async def test_login_then_whoami_is_the_token_user_and_device(
    stack: Stack, login: Login, homeserver: Homeserver
) -> None:
    alice = new_localpart("alice")
    token = await login(alice, "DEVA")

    body = await call(stack.bridge, "GET", WHOAMI, token)
    assert (body["user_id"], body["device_id"]) == (user_id(alice), "DEVA")
    # The homeserver holds the account, and exactly the one device the token names:
    # created with MSC4190 under masquerade, by the appservice login under device_login.
    assert await homeserver.is_active_account(user_id(alice))
    assert await homeserver.devices(user_id(alice)) == ["DEVA"]


async def test_create_room(stack: Stack, login: Login, homeserver: Homeserver) -> None:
    alice = new_localpart("alice")
    token = await login(alice, "DEVA")
    room_id = await public_room(stack.bridge, token, name="made through the bridge")

    # As the homeserver sees it: alice created the room and is its only member.
    await homeserver.admin_joins(room_id)
    state = await homeserver.as_admin("GET", f"{r(room_id)}/state")
    by_type = {e["type"]: e for e in state if e["state_key"] == ""}
    assert by_type["m.room.create"]["sender"] == user_id(alice)
    assert by_type["m.room.name"]["content"]["name"] == "made through the bridge"
    members = await homeserver.as_admin("GET", f"{r(room_id)}/joined_members")
    assert sorted(members["joined"]) == sorted([user_id(alice), homeserver.server.admin_user_id])


async def test_send_a_message_and_see_it_in_sync(
    stack: Stack, login: Login, homeserver: Homeserver
) -> None:
    alice = new_localpart("alice")
    token = await login(alice, "DEVA")
    room_id = await public_room(stack.bridge, token)
    event_id = await send_text(stack.bridge, token, room_id, secrets.token_hex(4), "hello")

    event = await sync_until_event(stack.bridge, token, room_id, event_id)
    assert (event["sender"], event["type"], event["content"]) == (
        user_id(alice),
        "m.room.message",
        {"msgtype": "m.text", "body": "hello"},
    )
    await homeserver.admin_joins(room_id)
    assert await homeserver.messages(room_id, until=1) == [(user_id(alice), "hello")]


async def test_to_device_reaches_only_the_addressed_device(stack: Stack, login: Login) -> None:
    alice = new_localpart("alice")
    token_a = await login(alice, "DEVA")
    token_b = await login(alice, "DEVB")
    # Both devices sync once, so the message below is new for each of them.
    since_a = (await sync(stack.bridge, token_a))["next_batch"]
    since_b = (await sync(stack.bridge, token_b))["next_batch"]

    await call(
        stack.bridge,
        "PUT",
        f"{V3}/sendToDevice/org.example.ping/{secrets.token_hex(4)}",
        token_a,
        json={"messages": {user_id(alice): {"DEVB": {"note": "for DEVB only"}}}},
    )

    received_b = await to_device_events(stack.bridge, token_b, since_b, at_least=1)
    assert [(e["type"], e["sender"], e["content"]) for e in received_b] == [
        ("org.example.ping", user_id(alice), {"note": "for DEVB only"})
    ]
    # DEVB has it, so the homeserver has delivered it: DEVA (the sender) got nothing.
    assert await to_device_events(stack.bridge, token_a, since_a, at_least=0) == []


async def test_same_transaction_id_from_two_users_and_two_devices(
    stack: Stack, login: Login, homeserver: Homeserver
) -> None:
    alice, bob = new_localpart("alice"), new_localpart("bob")
    token_a1, token_a2, token_b = await asyncio.gather(
        login(alice, "DEVA1"), login(alice, "DEVA2"), login(bob, "DEVB")
    )
    room_id = await public_room(stack.bridge, token_a1)
    await call(stack.bridge, "POST", f"{V3}/join/{quote(room_id)}", token_b, json={})

    # The homeserver deduplicates appservice transactions per appservice, not per user
    # (Synapse and Dendrite alike): masquerade rewrites the ID per (user, device);
    # device_login needs nothing, each device has its own token.
    txn = "same-txn-" + secrets.token_hex(4)
    senders = {token_a1: "from alice 1", token_a2: "from alice 2", token_b: "from bob"}
    sent = await asyncio.gather(
        *(send_text(stack.bridge, t, room_id, txn, text) for t, text in senders.items())
    )
    assert len(set(sent)) == 3, sent

    # A retry of the same transaction by the same device is still deduplicated.
    again = await send_text(stack.bridge, token_a1, room_id, txn, "the retry")
    assert again == sent[0]

    await homeserver.admin_joins(room_id)
    expected = sorted(
        [
            (user_id(alice), "from alice 1"),
            (user_id(alice), "from alice 2"),
            (user_id(bob), "from bob"),
        ]
    )
    assert sorted(await homeserver.messages(room_id, until=3)) == expected


async def test_the_sending_device_sees_its_transaction_id(stack: Stack, login: Login) -> None:
    alice, bob = new_localpart("alice"), new_localpart("bob")
    token, other_token, bob_token = await asyncio.gather(
        login(alice, "DEVA"), login(alice, "DEVA2"), login(bob, "DEVB")
    )
    room_id = await public_room(stack.bridge, token)
    await call(stack.bridge, "POST", f"{V3}/join/{quote(room_id)}", bob_token, json={})
    # Characters a client may use, percent-encoded in the path.
    txn = "local-echo/" + secrets.token_hex(4) + " é"
    event_id = await send_text(stack.bridge, token, room_id, txn, "echo")

    # Under masquerade the homeserver saw the bridge's per-device tag before the
    # ID; the bridge takes it out again, so both strategies give the client its own.
    mine = await sync_until_event(stack.bridge, token, room_id, event_id)
    assert mine["unsigned"].get("transaction_id") == txn
    # Only the sending device gets it: not another device of the same user, nor
    # another user.
    for other in (other_token, bob_token):
        theirs = await sync_until_event(stack.bridge, other, room_id, event_id)
        assert "transaction_id" not in theirs.get("unsigned", {})

    for who in (token, other_token, bob_token):
        messages = await call(
            stack.bridge, "GET", f"{r(room_id)}/messages", who, params={"dir": "b", "limit": "10"}
        )
        (in_messages,) = [e for e in messages["chunk"] if e["event_id"] == event_id]
        unsigned = in_messages.get("unsigned", {})
        if who == token and stack.homeserver != "dendrite":
            assert unsigned.get("transaction_id") == txn
        else:
            # Dendrite 0.13.8 gives transaction IDs in /sync only: its /messages (and
            # /event) leave them out for every device, the sender's included.
            assert "transaction_id" not in unsigned
    if stack.homeserver != "dendrite":
        event = await call(stack.bridge, "GET", f"{r(room_id)}/event/{quote(event_id)}", token)
        assert event["unsigned"].get("transaction_id") == txn


# --------------------------------------------------------------------------- restarting


@asynccontextmanager
async def served(config: BridgeConfig) -> AsyncIterator[BridgeClient]:
    """A new bridge app for ``config``, served on 127.0.0.1 until the block ends."""
    client: BridgeClient = TestClient(TestServer(create_app(config), host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def _synapse_tokens(server: SynapseServer, user: str, device_id: str) -> list[str]:
    """Synapse's access tokens for the device, from its database (read-only)."""
    db = server.workdir / "homeserver.db"
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            "SELECT token FROM access_tokens WHERE user_id = ? AND device_id = ?",
            (user, device_id),
        ).fetchall()
    return [row[0] for row in rows]


def _dendrite_tokens(server: DendriteServer, localpart: str, device_id: str) -> list[str]:
    """Dendrite's access tokens for the device, from its database (read-only)."""
    db = server.workdir / "dendrite_userapi.db"
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            "SELECT access_token FROM userapi_devices WHERE localpart = ? AND device_id = ?",
            (localpart, device_id),
        ).fetchall()
    return [row[0] for row in rows]


async def _kept_token(config: BridgeConfig, user: str, device_id: str) -> str | None:
    assert config.store is not None
    store = await open_store(config.store)
    try:
        return await store.device_token(user, device_id)
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["synapse", "dendrite"])
async def test_restarted_bridge_reuses_the_kept_token(
    kind: HomeserverKind,
    request: pytest.FixtureRequest,
    issuer: TestIssuer,
    device_login_appservice: AppserviceConfig,
    login: Login,
    tmp_path: Path,
) -> None:
    server: SynapseServer | DendriteServer = request.getfixturevalue(kind)
    config = bridge_config(
        issuer=issuer,
        homeserver_url=server.base_url,
        appservice=device_login_appservice,
        strategy="device_login",
        store_path=tmp_path / "bridge.db",
    )
    alice = new_localpart("alice")
    token = await login(alice, "DEVA")

    async with served(config) as first:
        body = await call(first, "GET", WHOAMI, token)
        assert (body["user_id"], body["device_id"]) == (user_id(alice), "DEVA")
    kept = await _kept_token(config, user_id(alice), "DEVA")
    assert kept is not None

    async with served(config) as second:  # a new process, as far as the bridge can tell
        body = await call(second, "GET", WHOAMI, token)
        assert (body["user_id"], body["device_id"]) == (user_id(alice), "DEVA")
    assert await _kept_token(config, user_id(alice), "DEVA") == kept

    if isinstance(server, SynapseServer):
        # Synapse keeps a device's earlier tokens valid when it logs in again, so a
        # second login would show as a second row.
        assert _synapse_tokens(server, user_id(alice), "DEVA") == [kept]
    else:
        # Dendrite replaces the device's token on every login (its one row would hold
        # a new token, and the kept one would be dead): the row still holds the kept one.
        assert _dendrite_tokens(server, alice, "DEVA") == [kept]
