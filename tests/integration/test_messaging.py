"""Rooms, messages, sync and to-device messages through the bridge, on real Synapse."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from tests.integration.conftest import BridgeClient, Login, auth, new_localpart
from tests.support.stack import SERVER_NAME

V3 = "/_matrix/client/v3"


async def call(bridge: BridgeClient, method: str, path: str, token: str, **kw: Any) -> Any:
    resp = await bridge.request(method, V3 + path, headers=auth(token), **kw)
    assert resp.status == 200, f"{method} {path}: {resp.status} {await resp.text()}"
    return await resp.json()


async def sync(bridge: BridgeClient, token: str, since: str | None = None) -> Any:
    params = {"timeout": "0"} if since is None else {"timeout": "0", "since": since}
    return await call(bridge, "GET", "/sync", token, params=params)


def timeline_bodies(sync_body: Any, room_id: str) -> list[str]:
    events = sync_body["rooms"]["join"][room_id]["timeline"]["events"]
    return [e["content"].get("body") for e in events if e["type"] == "m.room.message"]


async def test_create_room_send_and_sync(bridge: BridgeClient, login: Login) -> None:
    token = await login(new_localpart("alice"), "DEVA")
    room = await call(bridge, "POST", "/createRoom", token, json={"name": "bridge test"})
    room_id = room["room_id"]
    sent = await call(
        bridge,
        "PUT",
        f"/rooms/{room_id}/send/m.room.message/{secrets.token_hex(4)}",
        token,
        json={"msgtype": "m.text", "body": "hello through the bridge"},
    )
    assert sent["event_id"].startswith("$")
    body = await sync(bridge, token)
    assert "hello through the bridge" in timeline_bodies(body, room_id)


async def test_to_device_reaches_only_the_addressed_device(
    bridge: BridgeClient, login: Login
) -> None:
    alice = new_localpart("alice")
    user_id = f"@{alice}:{SERVER_NAME}"
    token_a = await login(alice, "DEVA")
    token_b = await login(alice, "DEVB")
    # Both devices sync once so the message below is new for each of them.
    since_a = (await sync(bridge, token_a))["next_batch"]
    since_b = (await sync(bridge, token_b))["next_batch"]

    await call(
        bridge,
        "PUT",
        f"/sendToDevice/org.example.ping/{secrets.token_hex(4)}",
        token_a,
        json={"messages": {user_id: {"DEVB": {"note": "for DEVB only"}}}},
    )

    received_b = (await sync(bridge, token_b, since_b)).get("to_device", {}).get("events", [])
    assert [(e["type"], e["sender"], e["content"]) for e in received_b] == [
        ("org.example.ping", user_id, {"note": "for DEVB only"})
    ]
    received_a = (await sync(bridge, token_a, since_a)).get("to_device", {}).get("events", [])
    assert received_a == []


async def test_two_users_same_transaction_id_same_room(bridge: BridgeClient, login: Login) -> None:
    alice, bob = new_localpart("alice"), new_localpart("bob")
    token_a = await login(alice, "DEVA")
    token_b = await login(bob, "DEVB")
    room_id = (await call(bridge, "POST", "/createRoom", token_a, json={"preset": "public_chat"}))[
        "room_id"
    ]
    await call(bridge, "POST", f"/join/{room_id}", token_b, json={})

    txn = "same-txn-" + secrets.token_hex(4)
    path = f"/rooms/{room_id}/send/m.room.message/{txn}"
    sent_a, sent_b = await asyncio.gather(
        call(bridge, "PUT", path, token_a, json={"msgtype": "m.text", "body": "from alice"}),
        call(bridge, "PUT", path, token_b, json={"msgtype": "m.text", "body": "from bob"}),
    )
    assert sent_a["event_id"] != sent_b["event_id"]

    # A retry of the same transaction by the same device is still deduplicated.
    again = await call(bridge, "PUT", path, token_a, json={"msgtype": "m.text", "body": "x"})
    assert again["event_id"] == sent_a["event_id"]

    messages = await call(
        bridge, "GET", f"/rooms/{room_id}/messages", token_a, params={"dir": "b", "limit": "20"}
    )
    by_sender = {
        e["sender"]: e["content"]["body"]
        for e in messages["chunk"]
        if e["type"] == "m.room.message"
    }
    assert by_sender == {
        f"@{alice}:{SERVER_NAME}": "from alice",
        f"@{bob}:{SERVER_NAME}": "from bob",
    }
