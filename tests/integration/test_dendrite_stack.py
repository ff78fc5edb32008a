"""The facts a ``device_login`` strategy relies on, checked against a real Dendrite.

Dendrite 0.13.8 has neither MSC4190 (appservice device management) nor MSC4326
(``device_id`` masquerading), so the bridge cannot act as a user's device with its
appservice token. What it can do: register the user through the appservice, log
in with ``m.login.application_service`` and a ``device_id``, and forward with the
per-device token that login returns. These tests talk to Dendrite directly.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import yaml

from bridge.config import AppserviceConfig
from bridge.homeserver.registration import registration
from tests.support.dendrite import DendriteServer, start_dendrite

SERVER_NAME = "bridge.test"
CLIENT = "/_matrix/client/v3"

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only


@pytest.fixture(scope="module")
def dendrite_appservice() -> AppserviceConfig:
    """Fresh random appservice tokens for the Dendrite under test."""
    return AppserviceConfig(as_token=secrets.token_urlsafe(32), hs_token=secrets.token_urlsafe(32))


@pytest.fixture(scope="module")
def dendrite(
    tmp_path_factory: pytest.TempPathFactory, dendrite_appservice: AppserviceConfig
) -> Iterator[DendriteServer]:
    """A Dendrite that loads the bridge's own registration (MSC4190 flag included)."""
    workdir = tmp_path_factory.mktemp("dendrite")
    reg = workdir / "bridge-registration.yaml"
    reg.write_text(yaml.safe_dump(registration(dendrite_appservice, SERVER_NAME)), "utf-8")
    server = start_dendrite(workdir=workdir, registration_files=[reg], server_name=SERVER_NAME)
    yield server
    server.stop()


def call(
    server: DendriteServer,
    method: str,
    path: str,
    token: str,
    body: dict[str, Any] | None = None,
    query: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """One client-server API request; returns (status, JSON body) for any status.

    ``path`` is relative to ``/_matrix/client/v3`` unless it starts with ``/_matrix/``.
    """
    url = server.base_url + (path if path.startswith("/_matrix/") else CLIENT + path)
    if query:
        url += "?" + urllib.parse.urlencode(query)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with _OPENER.open(req, timeout=30) as resp:
            return resp.status, dict(json.load(resp))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.loads(exc.read() or b"{}"))


def new_localpart(name: str) -> str:
    """A localpart no other test uses."""
    return f"{name}-{secrets.token_hex(4)}"


def user_id(localpart: str) -> str:
    """The full user ID of ``localpart`` on the test server."""
    return f"@{localpart}:{SERVER_NAME}"


def as_register(
    server: DendriteServer, as_token: str, localpart: str
) -> tuple[int, dict[str, Any]]:
    """Register ``localpart`` through the appservice, without a device."""
    return call(
        server,
        "POST",
        "/register",
        as_token,
        {"type": "m.login.application_service", "username": localpart, "inhibit_login": True},
    )


def as_login(
    server: DendriteServer, as_token: str, localpart: str, device_id: str
) -> tuple[int, dict[str, Any]]:
    """Log ``localpart`` in through the appservice as ``device_id``."""
    return call(
        server,
        "POST",
        "/login",
        as_token,
        {
            "type": "m.login.application_service",
            "identifier": {"type": "m.id.user", "user": localpart},
            "device_id": device_id,
        },
    )


def device_token(server: DendriteServer, as_token: str, localpart: str, device_id: str) -> str:
    """Register ``localpart`` through the appservice and log it in as ``device_id``."""
    status, body = as_register(server, as_token, localpart)
    assert status == 200, body
    status, body = as_login(server, as_token, localpart, device_id)
    assert status == 200, body
    return str(body["access_token"])


def test_starts_with_an_admin_and_old_spec_versions(dendrite: DendriteServer) -> None:
    status, body = call(dendrite, "GET", "/account/whoami", dendrite.admin_token)
    assert status == 200, body
    assert body["user_id"] == dendrite.admin_user_id
    status, versions = call(dendrite, "GET", "/_matrix/client/versions", dendrite.admin_token)
    assert status == 200, versions
    # Spec versions stop at v1.2 (no v1.3+ features such as native sliding sync).
    assert versions["versions"][-1] == "v1.2"


def test_appservice_registration_with_inhibit_login(
    dendrite: DendriteServer, dendrite_appservice: AppserviceConfig
) -> None:
    alice = new_localpart("alice")
    status, body = as_register(dendrite, dendrite_appservice.as_token, alice)
    assert status == 200, body
    assert body == {"user_id": user_id(alice)}  # no access_token, no device
    status, body = as_register(dendrite, dendrite_appservice.as_token, alice)
    assert (status, body["errcode"]) == (400, "M_USER_IN_USE")


def test_appservice_login_with_device_id_gives_a_device_token(
    dendrite: DendriteServer, dendrite_appservice: AppserviceConfig
) -> None:
    # Dendrite ignores the registration's io.element.msc4190 flag: appservice login
    # works (Synapse refuses it with M_APPSERVICE_LOGIN_UNSUPPORTED).
    alice = new_localpart("alice")
    status, body = as_register(dendrite, dendrite_appservice.as_token, alice)
    assert status == 200, body
    status, body = as_login(dendrite, dendrite_appservice.as_token, alice, "DEVA")
    assert status == 200, body
    assert body["user_id"] == user_id(alice)
    assert body["device_id"] == "DEVA"
    status, whoami = call(dendrite, "GET", "/account/whoami", body["access_token"])
    assert status == 200, whoami
    assert whoami["user_id"] == user_id(alice)
    assert whoami["device_id"] == "DEVA"


def test_device_token_creates_a_room_sends_and_syncs(
    dendrite: DendriteServer, dendrite_appservice: AppserviceConfig
) -> None:
    token = device_token(dendrite, dendrite_appservice.as_token, new_localpart("alice"), "DEVA")
    status, room = call(dendrite, "POST", "/createRoom", token, {"name": "device login"})
    assert status == 200, room
    room_id = urllib.parse.quote(room["room_id"])
    status, sent = call(
        dendrite,
        "PUT",
        f"/rooms/{room_id}/send/m.room.message/txn1",
        token,
        {"msgtype": "m.text", "body": "hello"},
    )
    assert status == 200, sent
    status, sync = call(dendrite, "GET", "/sync", token, query={"timeout": "0"})
    assert status == 200, sync
    timeline = sync["rooms"]["join"][room["room_id"]]["timeline"]["events"]
    mine = [event for event in timeline if event["event_id"] == sent["event_id"]]
    assert len(mine) == 1
    assert mine[0]["content"]["body"] == "hello"
    # The sending device gets its transaction ID back, as the spec asks.
    assert mine[0]["unsigned"]["transaction_id"] == "txn1"


def test_to_device_messages_reach_the_logged_in_device(
    dendrite: DendriteServer, dendrite_appservice: AppserviceConfig
) -> None:
    as_token = dendrite_appservice.as_token
    alice, bob = new_localpart("alice"), new_localpart("bob")
    alice_token = device_token(dendrite, as_token, alice, "ALICEDEV")
    bob_token = device_token(dendrite, as_token, bob, "BOBDEV")
    status, first = call(dendrite, "GET", "/sync", bob_token, query={"timeout": "0"})
    assert status == 200, first
    status, body = call(
        dendrite,
        "PUT",
        "/sendToDevice/m.test/txn1",
        alice_token,
        {"messages": {user_id(bob): {"BOBDEV": {"hello": "bob"}}}},
    )
    assert status == 200, body
    # A long poll may wake for something else first (Dendrite's device lists):
    # sync on until the message is there.
    since, events = first["next_batch"], []
    for _ in range(5):
        status, sync = call(
            dendrite, "GET", "/sync", bob_token, query={"since": since, "timeout": "10000"}
        )
        assert status == 200, sync
        since = sync["next_batch"]
        events = sync.get("to_device", {}).get("events", [])
        if events:
            break
    assert events == [{"type": "m.test", "sender": user_id(alice), "content": {"hello": "bob"}}]


def test_logging_in_again_as_the_same_device_revokes_the_old_token(
    dendrite: DendriteServer, dendrite_appservice: AppserviceConfig
) -> None:
    # Differs from Synapse, where the old token stays valid: Dendrite deletes the
    # device row (its token with it) and inserts it again. Device keys survive.
    alice = new_localpart("alice")
    old = device_token(dendrite, dendrite_appservice.as_token, alice, "DEVA")
    status, body = as_login(dendrite, dendrite_appservice.as_token, alice, "DEVA")
    assert status == 200, body
    new = body["access_token"]
    assert new != old
    status, whoami = call(dendrite, "GET", "/account/whoami", old)
    assert (status, whoami["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    status, whoami = call(dendrite, "GET", "/account/whoami", new)
    assert (status, whoami["device_id"]) == (200, "DEVA")


def test_login_before_registration_gives_a_token_that_fails_until_registered(
    dendrite: DendriteServer, dendrite_appservice: AppserviceConfig
) -> None:
    # Dendrite creates the device without checking that the account exists; the
    # token then answers 500 {"Err": ""} until the user is registered. So: register
    # first, log in second.
    ghost = new_localpart("ghost")
    status, body = as_login(dendrite, dendrite_appservice.as_token, ghost, "DEVG")
    assert status == 200, body
    token = body["access_token"]
    status, whoami = call(dendrite, "GET", "/account/whoami", token)
    assert status == 500, whoami
    status, body = as_register(dendrite, dendrite_appservice.as_token, ghost)
    assert status == 200, body
    status, whoami = call(dendrite, "GET", "/account/whoami", token)
    assert (status, whoami["user_id"], whoami["device_id"]) == (200, user_id(ghost), "DEVG")


def test_device_id_masquerading_is_not_honoured(
    dendrite: DendriteServer, dendrite_appservice: AppserviceConfig
) -> None:
    # No MSC4326: the user_id assertion works, but device_id (stable or MSC3202
    # unstable) is silently ignored and every appservice request runs as the fake
    # device "AS_Device", even for a device that does not exist, with 200.
    alice = new_localpart("alice")
    device_token(dendrite, dendrite_appservice.as_token, alice, "DEVA")
    for query in (
        {"device_id": "DEVA"},
        {"device_id": "NO-SUCH-DEVICE"},
        {"org.matrix.msc3202.device_id": "DEVA"},
    ):
        status, whoami = call(
            dendrite,
            "GET",
            "/account/whoami",
            dendrite_appservice.as_token,
            query={"user_id": user_id(alice), **query},
        )
        assert status == 200, (query, whoami)
        assert whoami == {"user_id": user_id(alice), "device_id": "AS_Device", "is_guest": False}
    # Asserting an unregistered user is refused, as on Synapse.
    status, body = call(
        dendrite,
        "GET",
        "/account/whoami",
        dendrite_appservice.as_token,
        query={"user_id": user_id(new_localpart("nobody"))},
    )
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")


def test_msc4190_device_creation_is_not_supported(
    dendrite: DendriteServer, dendrite_appservice: AppserviceConfig
) -> None:
    alice = new_localpart("alice")
    status, body = as_register(dendrite, dendrite_appservice.as_token, alice)
    assert status == 200, body
    status, body = call(
        dendrite,
        "PUT",
        "/devices/NEWDEV",
        dendrite_appservice.as_token,
        {"display_name": "new"},
        {"user_id": user_id(alice)},
    )
    # 404, but with errcode M_FORBIDDEN ("device does not exist"), not M_NOT_FOUND.
    assert status == 404, body
    assert body["errcode"] == "M_FORBIDDEN"
