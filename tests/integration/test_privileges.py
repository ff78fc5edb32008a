"""The seven findings of the appservice-power review, each on real Synapse.

Every forwarded request carries the appservice's identity under
``masquerade``; each test tries one way a user could borrow the
appservice's powers and then reads the homeserver's true state directly
(as its admin, not through the bridge) to show nothing happened.
docs/appservice-privileges.md lists every shortcut and the test for each.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from bridge.app import create_app
from bridge.config import AppserviceConfig, parse_config
from bridge.state import AUTHENTICATOR
from tests.integration.conftest import BridgeClient, Login, MakeBridge, auth, new_localpart
from tests.support.issuer import TestIssuer, obtain_token, start_issuer
from tests.support.stack import SERVER_NAME, bridge_config_document
from tests.support.synapse import ADMIN_LOCALPART, SynapseServer

V3 = "/_matrix/client/v3"
FORM = "application/x-www-form-urlencoded"


def user_id(localpart: str) -> str:
    return f"@{localpart}:{SERVER_NAME}"


class Admin:
    """Reads the homeserver's true state directly, as its admin."""

    def __init__(self, synapse: SynapseServer, http: aiohttp.ClientSession) -> None:
        self.synapse = synapse
        self.http = http

    async def call(self, method: str, path: str, body: object = None) -> Any:
        async with self.http.request(
            method, self.synapse.base_url + path, json=body, headers=auth(self.synapse.admin_token)
        ) as resp:
            assert resp.status == 200, f"{method} {path}: {resp.status} {await resp.text()}"
            return await resp.json()

    async def events(self, room_id: str) -> list[dict[str, Any]]:
        answer = await self.call(
            "GET", f"/_synapse/admin/v1/rooms/{quote(room_id)}/messages?dir=b&limit=100"
        )
        events: list[dict[str, Any]] = answer["chunk"]
        return events

    async def members(self, room_id: str) -> set[str]:
        answer = await self.call("GET", f"/_synapse/admin/v1/rooms/{quote(room_id)}/members")
        return set(answer["members"])

    async def membership(self, room_id: str, user: str) -> str | None:
        answer = await self.call("GET", f"/_synapse/admin/v1/rooms/{quote(room_id)}/state")
        for event in answer["state"]:
            if event["type"] == "m.room.member" and event["state_key"] == user:
                return str(event["content"]["membership"])
        return None

    async def devices(self, user: str) -> set[str]:
        answer = await self.call("GET", f"/_synapse/admin/v2/users/{quote(user)}/devices")
        return {d["device_id"] for d in answer["devices"]}

    async def master_key(self, user: str) -> Any:
        answer = await self.call("POST", f"{V3}/keys/query", {"device_keys": {user: []}})
        return answer.get("master_keys", {}).get(user, {}).get("keys")


@pytest.fixture
def admin(synapse: SynapseServer, http: aiohttp.ClientSession) -> Admin:
    return Admin(synapse, http)


async def call(
    bridge: BridgeClient, method: str, path: str, token: str, **kw: Any
) -> tuple[int, Any]:
    resp = await bridge.request(method, V3 + path, headers=auth(token), **kw)
    return resp.status, await resp.json(content_type=None)


async def ok(bridge: BridgeClient, method: str, path: str, token: str, **kw: Any) -> Any:
    status, body = await call(bridge, method, path, token, **kw)
    assert status == 200, f"{method} {path}: {status} {body}"
    return body


class Pair:
    """Two users logged in through the bridge: an attacker and the victim, with the
    victim's private room (invite-only, history shared with members only)."""

    def __init__(self, attacker: str, victim: str, tokens: tuple[str, str], room: str) -> None:
        self.attacker, self.victim = attacker, victim
        self.attacker_token, self.victim_token = tokens
        self.room = room


@pytest.fixture
async def pair(bridge: BridgeClient, login: Login) -> Pair:
    attacker, victim = new_localpart("mallory"), new_localpart("victim")
    tokens = (await login(attacker, "MALLORYDEV"), await login(victim, "VICTIMDEV"))
    room = await ok(bridge, "POST", "/createRoom", tokens[1], json={"preset": "private_chat"})
    await ok(bridge, "GET", "/account/whoami", tokens[0])  # the attacker exists too
    return Pair(attacker, victim, tokens, room["room_id"])


# ---------------------------------------------------------------------------------------
# 1. Identity injection through a form-typed body


def smuggled(victim: str) -> str:
    """Query arguments for Twisted's form parser, to hide in a JSON string: the victim
    and their device (device IDs are public in /keys/query), with a chosen timestamp."""
    return f"&user_id={victim}&device_id=VICTIMDEV&ts=1000&x=;user_id={victim};"


def smuggling(victim: str) -> str:
    """JSON that still parses as JSON, and as a form."""
    return json.dumps({"msgtype": "m.text", "body": "x" + smuggled(victim)})


@pytest.mark.parametrize(
    "content_type",
    [FORM, "APPLICATION/X-WWW-FORM-URLENCODED; charset=utf-8", "multipart/form-data"],
)
async def test_form_body_cannot_send_as_another_user(
    bridge: BridgeClient, pair: Pair, admin: Admin, content_type: str
) -> None:
    await ok(bridge, "POST", f"/rooms/{pair.room}/invite", pair.victim_token,
             json={"user_id": user_id(pair.attacker)})  # fmt: skip
    await ok(bridge, "POST", f"/join/{pair.room}", pair.attacker_token, json={})
    headers = {**auth(pair.attacker_token), "Content-Type": content_type}
    resp = await bridge.post(
        f"{V3}/rooms/{pair.room}/send/m.room.message",
        data=smuggling(user_id(pair.victim)),
        headers=headers,
    )
    assert resp.status == 400
    assert (await resp.json())["errcode"] == "M_INVALID_PARAM"

    # The victim's leave, through the same trick.
    resp = await bridge.post(
        f"{V3}/rooms/{pair.room}/leave",
        data=json.dumps({"reason": smuggled(user_id(pair.victim))}),
        headers=headers,
    )
    assert resp.status == 400

    messages = [e for e in await admin.events(pair.room) if e["type"] == "m.room.message"]
    assert messages == []
    assert user_id(pair.victim) in await admin.members(pair.room)
    assert all(e["origin_server_ts"] > 1_000_000 for e in await admin.events(pair.room))


async def test_form_body_cannot_get_an_openid_token_invite_or_replace_keys(
    bridge: BridgeClient, pair: Pair, admin: Admin
) -> None:
    victim = user_id(pair.victim)
    headers = {**auth(pair.attacker_token), "Content-Type": FORM}
    attempts = [
        (f"/user/{quote(victim)}/openid/request_token", json.dumps({"x": smuggled(victim)})),
        (
            f"/rooms/{pair.room}/invite",
            json.dumps({"user_id": user_id(pair.attacker), "x": smuggled(victim)}),
        ),
        (
            "/keys/device_signing/upload",
            json.dumps(
                {
                    "master_key": {
                        "user_id": victim,
                        "usage": ["master"],
                        "keys": {"ed25519:evil": "evil"},
                    },
                    "x": smuggled(victim),
                }
            ),
        ),
    ]
    for path, body in attempts:
        resp = await bridge.post(V3 + path, data=body, headers=headers)
        assert resp.status == 400, path
    assert await admin.membership(pair.room, user_id(pair.attacker)) is None
    assert await admin.master_key(victim) is None


async def test_form_body_cannot_upload_media_or_keys_for_another_device(
    bridge: BridgeClient, pair: Pair
) -> None:
    headers = {**auth(pair.attacker_token), "Content-Type": FORM}
    resp = await bridge.post(
        "/_matrix/media/v3/upload", data=f"user_id={user_id(pair.victim)}", headers=headers
    )
    assert resp.status == 400
    otk = {"signed_curve25519:AAAA": {"key": "k", "signatures": {}}}
    resp = await bridge.post(
        f"{V3}/keys/upload",
        data=json.dumps({"one_time_keys": otk, "x": smuggled(user_id(pair.victim))}),
        headers=headers,
    )
    assert resp.status == 400
    # The victim's device has no one-time keys (an empty upload reports the counts).
    counts = await ok(bridge, "POST", "/keys/upload", pair.victim_token, json={})
    assert counts["one_time_key_counts"].get("signed_curve25519", 0) == 0
    # The same upload as JSON is the attacker's own, as it should be.
    await ok(bridge, "POST", "/keys/upload", pair.attacker_token, json={"one_time_keys": otk})
    counts = await ok(bridge, "POST", "/keys/upload", pair.attacker_token, json={})
    assert counts["one_time_key_counts"]["signed_curve25519"] == 1


# ---------------------------------------------------------------------------------------
# 2. Reads that skip membership


async def test_joined_members_of_a_room_the_user_is_not_in_is_403(
    bridge: BridgeClient, pair: Pair
) -> None:
    path = f"/rooms/{pair.room}/joined_members"
    status, body = await call(bridge, "GET", path, pair.attacker_token)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    assert user_id(pair.victim) not in json.dumps(body)

    # Invited, then joined: the members are readable; after leaving, no longer.
    await ok(bridge, "POST", f"/rooms/{pair.room}/invite", pair.victim_token,
             json={"user_id": user_id(pair.attacker)})  # fmt: skip
    assert (await call(bridge, "GET", path, pair.attacker_token))[0] == 403
    await ok(bridge, "POST", f"/join/{pair.room}", pair.attacker_token, json={})
    members = (await ok(bridge, "GET", path, pair.attacker_token))["joined"]
    assert set(members) == {user_id(pair.victim), user_id(pair.attacker)}
    await ok(bridge, "POST", f"/rooms/{pair.room}/leave", pair.attacker_token, json={})
    assert (await call(bridge, "GET", path, pair.attacker_token))[0] == 403


async def test_joined_members_of_a_world_readable_room_as_synapse_allows(
    bridge: BridgeClient, pair: Pair
) -> None:
    await ok(bridge, "PUT", f"/rooms/{pair.room}/state/m.room.history_visibility/",
             pair.victim_token, json={"history_visibility": "world_readable"})  # fmt: skip
    path = f"/rooms/{pair.room}/joined_members"
    members = (await ok(bridge, "GET", path, pair.attacker_token))["joined"]
    assert set(members) == {user_id(pair.victim)}


# ---------------------------------------------------------------------------------------
# 3. Devices out of thin air


async def test_put_devices_cannot_create_a_device(
    bridge: BridgeClient, pair: Pair, admin: Admin
) -> None:
    before = await admin.devices(user_id(pair.attacker))
    assert before == {"MALLORYDEV"}
    status, body = await call(bridge, "PUT", "/devices/GHOSTDEVICE", pair.attacker_token, json={})
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, _ = await call(bridge, "PUT", "/devices/VICTIMDEV", pair.attacker_token, json={})
    assert status == 404
    assert await admin.devices(user_id(pair.attacker)) == before

    # Renaming one's own device still works.
    await ok(bridge, "PUT", "/devices/MALLORYDEV", pair.attacker_token,
             json={"display_name": "laptop"})  # fmt: skip
    device = await ok(bridge, "GET", "/devices/MALLORYDEV", pair.attacker_token)
    assert device["display_name"] == "laptop"


# ---------------------------------------------------------------------------------------
# 4. The appservice's own bot


async def test_the_appservice_sender_cannot_log_in_through_the_bridge(
    bridge: BridgeClient, login: Login, appservice: AppserviceConfig, admin: Admin
) -> None:
    token = await login(appservice.sender_localpart, "BOTDEVICE")
    status, body = await call(bridge, "GET", "/account/whoami", token)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, _ = await call(
        bridge, "PUT", f"/profile/{quote(user_id(appservice.sender_localpart))}/displayname",
        token, json={"displayname": "pwned"},
    )  # fmt: skip
    assert status == 403
    async with admin.http.get(
        f"{admin.synapse.base_url}{V3}/profile/{quote(user_id(appservice.sender_localpart))}"
    ) as resp:
        profile = await resp.json()
    assert profile.get("displayname") != "pwned"  # (no profile at all: 404)


# ---------------------------------------------------------------------------------------
# 5. Cache eviction by garbage


@pytest.fixture
def own_issuer() -> Iterator[TestIssuer]:
    """An issuer of this test's own, so it can be stopped without harming the others."""
    running = start_issuer()
    yield running
    running.stop()


async def test_garbage_flood_neither_evicts_sessions_nor_overloads_the_issuer(
    aiohttp_client: Any,
    synapse: SynapseServer,
    appservice: AppserviceConfig,
    own_issuer: TestIssuer,
    http: aiohttp.ClientSession,
) -> None:
    max_inflight = 16
    document = bridge_config_document(
        issuer=own_issuer,
        homeserver_url=synapse.base_url,
        appservice=appservice,
        token_cache={"max_size": 100, "negative_max_size": 100},
    )
    document["issuer"]["max_inflight"] = max_inflight  # type: ignore[index]
    app = create_app(parse_config(document))
    bridge: BridgeClient = await aiohttp_client(app)
    alice = new_localpart("alice")
    token = (
        await obtain_token(http, own_issuer.url, username=alice, device_id="DEVA")
    ).access_token
    assert (await ok(bridge, "GET", "/account/whoami", token))["user_id"] == user_id(alice)
    own_issuer.reset_counters()

    statuses: dict[int, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(20_000):
        queue.put_nowait(n)
    nonce = secrets.token_hex(4)

    async def flooder() -> None:
        while not queue.empty():
            n = queue.get_nowait()
            resp = await bridge.get(f"{V3}/account/whoami", headers=auth(f"garbage-{nonce}-{n}"))
            await resp.read()
            statuses[resp.status] = statuses.get(resp.status, 0) + 1

    started = time.monotonic()
    await asyncio.gather(*(flooder() for _ in range(200)))
    logging.getLogger(__name__).info("flood: %s in %.1fs", statuses, time.monotonic() - started)
    counters = own_issuer.counters()
    assert set(statuses) <= {401, 503}
    assert sum(statuses.values()) == 20_000
    assert 0 < counters["introspection"] <= 20_000
    assert counters["introspection_max_inflight"] <= max_inflight

    # The issuer goes away right after: the live session is still cached and served.
    own_issuer.stop()
    assert (await ok(bridge, "GET", "/account/whoami", token))["user_id"] == user_id(alice)
    assert len(app[AUTHENTICATOR]) == 1


# ---------------------------------------------------------------------------------------
# 6. Odd tokens


async def test_jwt_the_issuer_will_not_introspect_is_401_without_an_error_logged(
    make_bridge: MakeBridge,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    jwt_issuer = start_issuer(access_token_format="jwt")
    try:
        bridge = await make_bridge(on_issuer=jwt_issuer)
        tokens = await obtain_token(
            http, jwt_issuer.url, username=new_localpart("alice"), device_id="DEVA"
        )
        assert tokens.access_token.count(".") == 2  # a JWT, which oidc-provider does not store
        for _ in range(2):
            status, body = await call(bridge, "GET", "/account/whoami", tokens.access_token)
            assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
        assert jwt_issuer.introspection_count() == 1  # the answer was cached
    finally:
        jwt_issuer.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_non_utf8_token_is_401(bridge: BridgeClient) -> None:
    reader, writer = await asyncio.open_connection(bridge.host, bridge.port)
    writer.write(
        f"GET {V3}/account/whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
        + b"Authorization: Bearer \xff\xfe\r\n\r\n"
    )
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401")
    assert b"M_UNKNOWN_TOKEN" in answer


# ---------------------------------------------------------------------------------------
# 7. Smaller doors, and room aliases that work as for a normal user


async def test_delete_devices_with_an_empty_id_is_refused(
    bridge: BridgeClient, pair: Pair, admin: Admin
) -> None:
    # As Synapse in MAS mode: the empty ID is refused by the servlet, /devices is GET only.
    for path, answer in (("/devices/", 404), ("/devices", 405)):
        status, body = await call(bridge, "DELETE", path, pair.attacker_token, json={})
        assert (status, body["errcode"]) == (answer, "M_UNRECOGNIZED")
    assert await admin.devices(user_id(pair.attacker)) == {"MALLORYDEV"}


@pytest.mark.parametrize(
    "path",
    [
        "/_matrix/client/v1/appservice/matrix-oidc-bridge/ping",
        "/_matrix/client/unstable/io.element.msc4512/appservice/fed_proxy",
    ],
)
async def test_appservice_endpoints_are_refused(
    bridge: BridgeClient, pair: Pair, appservice: AppserviceConfig, path: str
) -> None:
    resp = await bridge.post(
        path.replace("matrix-oidc-bridge", appservice.id),
        json={"transaction_id": "x"},
        headers=auth(pair.attacker_token),
    )
    assert resp.status == 403
    assert (await resp.json())["errcode"] == "M_FORBIDDEN"


async def test_room_aliases_work_with_the_rules_of_a_normal_user(
    bridge: BridgeClient, pair: Pair, admin: Admin
) -> None:
    local = f"room-{secrets.token_hex(4)}"
    alias = f"#{local}:{SERVER_NAME}"
    # createRoom with an alias (M_EXCLUSIVE before).
    room = await ok(bridge, "POST", "/createRoom", pair.attacker_token,
                    json={"room_alias_name": local})  # fmt: skip
    resolved = await ok(bridge, "GET", f"/directory/room/{quote(alias)}", pair.attacker_token)
    assert resolved["room_id"] == room["room_id"]

    # A second alias for one's own room; none for a room one is not in.
    second = f"#second-{secrets.token_hex(4)}:{SERVER_NAME}"
    await ok(bridge, "PUT", f"/directory/room/{quote(second)}", pair.attacker_token,
             json={"room_id": room["room_id"]})  # fmt: skip
    foreign = f"#foreign-{secrets.token_hex(4)}:{SERVER_NAME}"
    status, body = await call(bridge, "PUT", f"/directory/room/{quote(foreign)}",
                              pair.attacker_token, json={"room_id": pair.room})  # fmt: skip
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, _ = await call(bridge, "GET", f"/directory/room/{quote(foreign)}", pair.victim_token)
    assert status == 404

    # The victim's alias cannot be deleted by the attacker; the attacker's own can.
    victims = f"#victims-{secrets.token_hex(4)}:{SERVER_NAME}"
    await ok(bridge, "PUT", f"/directory/room/{quote(victims)}", pair.victim_token,
             json={"room_id": pair.room})  # fmt: skip
    status, body = await call(bridge, "DELETE", f"/directory/room/{quote(victims)}",
                              pair.attacker_token)  # fmt: skip
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    still = await ok(bridge, "GET", f"/directory/room/{quote(victims)}", pair.attacker_token)
    assert still["room_id"] == pair.room
    await ok(bridge, "DELETE", f"/directory/room/{quote(second)}", pair.attacker_token)
    status, _ = await call(bridge, "GET", f"/directory/room/{quote(second)}", pair.attacker_token)
    assert status == 404


@pytest.fixture
async def guarded_bridge(
    aiohttp_client: Any, synapse: SynapseServer, appservice: AppserviceConfig, issuer: TestIssuer,
    tmp_path: Path,
) -> BridgeClient:  # fmt: skip
    """A bridge that knows of another appservice (a Telegram bridge) and a reserved user."""
    other = tmp_path / "telegram-registration.yaml"
    other.write_text(
        "id: telegram\nnamespaces:\n"
        "  users: [{exclusive: true, regex: '@telegram_.*:bridge\\.test'}]\n"
        "  aliases: [{exclusive: true, regex: '#telegram_.*:bridge\\.test'}]\n",
        encoding="utf-8",
    )
    document = bridge_config_document(
        issuer=issuer, homeserver_url=synapse.base_url, appservice=appservice
    )
    document["appservice"].update(  # type: ignore[attr-defined]
        {"reserved_localparts": ["notices"], "other_registrations": [str(other)]}
    )
    client: BridgeClient = await aiohttp_client(create_app(parse_config(document)))
    return client


@pytest.mark.parametrize("localpart", ["notices", "telegram_12345"])
async def test_reserved_and_other_appservices_users_cannot_be_acted_as(
    guarded_bridge: BridgeClient, login: Login, admin: Admin, localpart: str
) -> None:
    token = await login(localpart, "DEVX")
    status, body = await call(guarded_bridge, "GET", "/account/whoami", token)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    async with admin.http.get(
        f"{admin.synapse.base_url}/_synapse/admin/v2/users/{quote(user_id(localpart))}",
        headers=auth(admin.synapse.admin_token),
    ) as resp:
        assert resp.status == 404  # never registered through the bridge


async def test_other_appservices_aliases_are_refused(
    guarded_bridge: BridgeClient, login: Login
) -> None:
    token = await login(new_localpart("alice"), "DEVA")
    room = await ok(guarded_bridge, "POST", "/createRoom", token, json={})
    ghost_alias = f"#telegram_{secrets.token_hex(4)}:{SERVER_NAME}"
    status, body = await call(guarded_bridge, "PUT", f"/directory/room/{quote(ghost_alias)}",
                              token, json={"room_id": room["room_id"]})  # fmt: skip
    assert (status, body["errcode"]) == (400, "M_EXCLUSIVE")
    local = f"telegram_{secrets.token_hex(4)}"
    status, body = await call(guarded_bridge, "POST", "/createRoom", token,
                              json={"room_alias_name": local})  # fmt: skip
    assert (status, body["errcode"]) == (400, "M_EXCLUSIVE")
    for alias in (ghost_alias, f"#{local}:{SERVER_NAME}"):
        status, _ = await call(guarded_bridge, "GET", f"/directory/room/{quote(alias)}", token)
        assert status == 404


# ---------------------------------------------------------------------------------------
# Account states the homeserver checks only for a user's own token (AS-05, AS-06)


@pytest.fixture
async def state_bridge(
    aiohttp_client: Any, synapse: SynapseServer, appservice: AppserviceConfig, issuer: TestIssuer
) -> BridgeClient:
    """A bridge that reads users' states as the homeserver's admin."""
    document = bridge_config_document(
        issuer=issuer, homeserver_url=synapse.base_url, appservice=appservice
    )
    document["homeserver"].update(  # type: ignore[attr-defined]
        {"admin_localpart": ADMIN_LOCALPART, "account_state_ttl": 1}
    )
    client: BridgeClient = await aiohttp_client(create_app(parse_config(document)))
    return client


async def test_a_locked_account_is_refused_as_synapse_refuses_it(
    state_bridge: BridgeClient, login: Login, admin: Admin
) -> None:
    alice = new_localpart("alice")
    token = await login(alice, "DEVA")
    await ok(state_bridge, "GET", "/account/whoami", token)
    await admin.call("PUT", f"/_synapse/admin/v2/users/{quote(user_id(alice))}", {"locked": True})
    await asyncio.sleep(1.1)  # account_state_ttl
    status, body = await call(state_bridge, "GET", "/account/whoami", token)
    assert (status, body["errcode"], body["soft_logout"]) == (401, "M_USER_LOCKED", True)
    await admin.call("PUT", f"/_synapse/admin/v2/users/{quote(user_id(alice))}", {"locked": False})
    await asyncio.sleep(1.1)
    await ok(state_bridge, "GET", "/account/whoami", token)


async def test_a_deactivated_account_is_refused_at_once_and_not_provisioned_again(
    state_bridge: BridgeClient, login: Login, admin: Admin
) -> None:
    alice = new_localpart("alice")
    token = await login(alice, "DEVA")
    await ok(state_bridge, "GET", "/account/whoami", token)
    await admin.call("POST", f"/_synapse/admin/v1/deactivate/{quote(user_id(alice))}", {})
    # No waiting: deactivation deleted the device, and healing reads the state again.
    status, body = await call(state_bridge, "GET", "/account/whoami", token)
    assert (status, body["errcode"]) == (403, "M_USER_DEACTIVATED")
    assert await admin.devices(user_id(alice)) == set()


async def test_a_shadow_banned_account_may_read_but_not_write(
    state_bridge: BridgeClient, login: Login, admin: Admin
) -> None:
    alice = new_localpart("alice")
    token = await login(alice, "DEVA")
    room = await ok(state_bridge, "POST", "/createRoom", token, json={})
    await admin.call("POST", f"/_synapse/admin/v1/users/{quote(user_id(alice))}/shadow_ban", {})
    await asyncio.sleep(1.1)
    await ok(state_bridge, "GET", "/joined_rooms", token)
    status, body = await call(
        state_bridge, "PUT", f"/rooms/{room['room_id']}/send/m.room.message/t1", token,
        json={"msgtype": "m.text", "body": "spam"},
    )  # fmt: skip
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    messages = [e for e in await admin.events(room["room_id"]) if e["type"] == "m.room.message"]
    assert messages == []


@pytest.mark.parametrize(
    ("issuer_settings", "accepted"),
    [
        ({"audiences": ["urn:matrix:client"]}, True),  # the test issuer's resource
        ({"audiences": ["https://another.example/"]}, False),
        ({"client_ids": ["some-other-client"]}, False),
    ],
)
async def test_introspection_answers_are_checked_against_audience_and_client_lists(
    aiohttp_client: Any,
    synapse: SynapseServer,
    appservice: AppserviceConfig,
    issuer: TestIssuer,
    login: Login,
    issuer_settings: dict[str, list[str]],
    accepted: bool,
) -> None:
    document = bridge_config_document(
        issuer=issuer, homeserver_url=synapse.base_url, appservice=appservice
    )
    document["issuer"].update(issuer_settings)  # type: ignore[attr-defined]
    bridge: BridgeClient = await aiohttp_client(create_app(parse_config(document)))
    token = await login(new_localpart("alice"), "DEVA")
    status, body = await call(bridge, "GET", "/account/whoami", token)
    assert status == (200 if accepted else 401), body


async def test_the_admin_api_needs_the_admin_scope_even_when_allow_listed(
    aiohttp_client: Any,
    synapse: SynapseServer,
    appservice: AppserviceConfig,
    issuer: TestIssuer,
    http: aiohttp.ClientSession,
    admin: Admin,
) -> None:
    document = bridge_config_document(
        issuer=issuer,
        homeserver_url=synapse.base_url,
        appservice=appservice,
        homeserver={"url": synapse.base_url, "admin_api_allowlist": ["/_synapse/admin/v2/users"]},
    )
    document["homeserver"]["strategy"] = "masquerade"  # type: ignore[index]
    bridge: BridgeClient = await aiohttp_client(create_app(parse_config(document)))
    alice = new_localpart("alice")
    plain = (await obtain_token(http, issuer.url, username=alice, device_id="DEVA")).access_token
    scoped = (
        await obtain_token(
            http,
            issuer.url,
            username=alice,
            device_id="DEVB",
            extra_scopes=("urn:synapse:admin:*",),
        )
    ).access_token
    await ok(bridge, "GET", "/account/whoami", plain)
    path = f"/_synapse/admin/v2/users/{quote(user_id(alice))}"
    await admin.call("PUT", path, {"admin": True})  # a server admin on the homeserver

    resp = await bridge.get(path, headers=auth(plain))
    assert resp.status == 403  # the bridge's refusal: no admin scope
    assert "urn:synapse:admin:*" in (await resp.json())["error"]
    resp = await bridge.get(path, headers=auth(scoped))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["admin"] is True
