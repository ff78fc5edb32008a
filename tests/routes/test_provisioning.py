"""MAS's provisioning API (/_synapse/mas/*) against the fake homeserver: the shared
secret, body validation, status codes (docs/mas-provisioning-api.md §1-2).

Everything that must be refused is refused before the homeserver hears of it.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient, AiohttpServer

from tests.fakes import (
    SERVER_NAME,
    BridgeClient,
    FakeHomeserver,
    FakeIssuer,
    active_claims,
    bridge_config,
    start_bridge,
)

SECRET = "mas-shared-secret-0123456789"
MAS = {"Authorization": f"Bearer {SECRET}", "User-Agent": "matrix-authentication-service/1.22.0"}
V3 = "/_matrix/client/v3"


def mxid(localpart: str) -> str:
    return f"@{localpart}:{SERVER_NAME}"


class FakeAccounts:
    """Users, profiles and devices behind the fake homeserver's client API, as the
    appservice sees them with ``?user_id=`` (registration and ``PUT /devices`` are
    answered by the fake homeserver itself and read back from its records)."""

    def __init__(self, homeserver: FakeHomeserver) -> None:
        self.homeserver = homeserver
        self.users: set[str] = set()
        self.displaynames: dict[str, str] = {}
        self.deleted_devices: set[tuple[str, str]] = set()
        self.master_keys: dict[str, dict[str, Any]] = {}

    def registered(self) -> set[str]:
        return self.users | {
            mxid(json.loads(r.body)["username"]) for r in self.homeserver.of_kind("register")
        }

    def devices(self, user_id: str) -> set[str]:
        created = {
            unquote(r.raw_path.rsplit("/", 1)[1])
            for r in self.homeserver.of_kind("device")
            if r.query.get("user_id") == user_id
        }
        return {d for d in created if (user_id, d) not in self.deleted_devices}

    async def answer(self, request: web.Request) -> web.StreamResponse:
        user_id = request.query.get("user_id", "")
        path = request.path
        if user_id not in self.registered():
            return web.json_response(
                {"errcode": "M_FORBIDDEN", "error": "not registered"}, status=403
            )
        if path == f"{V3}/account/whoami":
            return web.json_response({"user_id": user_id})
        if path.startswith(f"{V3}/profile/"):
            if request.method == "PUT":
                self.displaynames[user_id] = (await request.json())["displayname"]
                return web.json_response({})
            name = self.displaynames.get(user_id)
            return web.json_response({} if name is None else {"displayname": name})
        if path == f"{V3}/devices":
            devices = [{"device_id": d} for d in sorted(self.devices(user_id))]
            return web.json_response({"devices": devices})
        if path.startswith(f"{V3}/devices/"):
            device_id = path.rsplit("/", 1)[1]
            if request.method == "DELETE":
                self.deleted_devices.add((user_id, device_id))
                return web.json_response({})
            if device_id in self.devices(user_id):
                return web.json_response({"device_id": device_id})
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "No device"}, status=404)
        if path == f"{V3}/account/deactivate":
            return web.json_response({"id_server_unbind_result": "success"})
        if path == f"{V3}/keys/query":
            keys = self.master_keys.get(user_id)
            return web.json_response({"master_keys": {user_id: keys} if keys else {}})
        return web.json_response({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized"}, status=404)


@pytest.fixture
async def mas_issuer(aiohttp_server: AiohttpServer) -> FakeIssuer:
    return await FakeIssuer.start(aiohttp_server)


@pytest.fixture
def accounts(homeserver: FakeHomeserver) -> FakeAccounts:
    fake = FakeAccounts(homeserver)
    homeserver.answer = fake.answer
    return fake


def mas_config(issuer: FakeIssuer, homeserver: FakeHomeserver, *extra: dict[str, Any]) -> Any:
    return bridge_config(
        issuer.url,
        homeserver.url,
        {
            "issuer": {
                "kind": "mas",
                "introspection": {
                    "auth": "mas_shared_secret",
                    "client_id": None,
                    "client_secret": SECRET,
                },
            }
        },
        *extra,
    )


@pytest.fixture
async def bridge(
    aiohttp_client: AiohttpClient,
    mas_issuer: FakeIssuer,
    homeserver: FakeHomeserver,
    accounts: FakeAccounts,
) -> BridgeClient:
    return await start_bridge(aiohttp_client, mas_config(mas_issuer, homeserver))


async def call(
    bridge: BridgeClient,
    endpoint: str,
    body: object = None,
    *,
    raw: bytes | None = None,
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One call as MAS makes it: GET with a query, or POST with a JSON body."""
    path = f"/_synapse/mas/{endpoint}"
    sent = MAS if headers is None else headers
    if body is None and raw is None:
        resp = await bridge.get(path, params=query, headers=sent)
    else:
        data = raw if raw is not None else json.dumps(body).encode()
        resp = await bridge.post(
            path, data=data, params=query, headers={**sent, "Content-Type": "application/json"}
        )
    text = await resp.text()
    return resp.status, json.loads(text) if text else None


# A valid call of each endpoint, for a user that does not exist.
VALID_CALLS: dict[str, tuple[object, dict[str, str] | None]] = {
    "query_user": (None, {"localpart": "alice"}),
    "provision_user": ({"localpart": "alice"}, None),
    "is_localpart_available": (None, {"localpart": "alice"}),
    "delete_user": ({"localpart": "alice", "erase": False}, None),
    "reactivate_user": ({"localpart": "alice"}, None),
    "set_displayname": ({"localpart": "alice", "displayname": "Alice"}, None),
    "unset_displayname": ({"localpart": "alice"}, None),
    "upsert_device": ({"localpart": "alice", "device_id": "DEVICEAAAA"}, None),
    "update_device_display_name": (
        {"localpart": "alice", "device_id": "DEVICEAAAA", "display_name": "x"},
        None,
    ),
    "delete_device": ({"localpart": "alice", "device_id": "DEVICEAAAA"}, None),
    "sync_devices": ({"localpart": "alice", "devices": []}, None),
    "allow_cross_signing_reset": ({"localpart": "alice"}, None),
}


# -- the shared secret ------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", sorted(VALID_CALLS))
@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer wrong-secret"},
        {"Authorization": f"Bearer {SECRET}x"},
        {},
        {"Authorization": f"Basic {SECRET}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {SECRET[:-1]}é"},
    ],
)
async def test_anything_but_the_secret_is_403_and_nothing_is_done(
    bridge: BridgeClient, homeserver: FakeHomeserver, endpoint: str, headers: dict[str, str]
) -> None:
    """Missing, malformed or wrong alike: 403 M_FORBIDDEN (the issue's contract; Synapse
    says 401 for a missing token and M_UNKNOWN for a wrong one, MAS reads neither)."""
    body, query = VALID_CALLS[endpoint]
    got, answer = await call(bridge, endpoint, body, query=query, headers=headers)
    assert (got, answer["errcode"]) == (403, "M_FORBIDDEN")
    assert "must only be called by MAS" in answer["error"]
    assert homeserver.requests == []


async def test_the_scheme_is_case_insensitive(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    status, _ = await call(
        bridge,
        "is_localpart_available",
        query={"localpart": "alice"},
        headers={"Authorization": f"bearer {SECRET}"},
    )
    assert status == 200


@pytest.mark.parametrize("headers", [{}, MAS])
async def test_the_secret_is_never_read_from_the_query_string(
    bridge: BridgeClient, homeserver: FakeHomeserver, headers: dict[str, str]
) -> None:
    """Proxies log query strings."""
    status, answer = await call(
        bridge,
        "is_localpart_available",
        query={"localpart": "alice", "access_token": SECRET},
        headers=headers,
    )
    if headers:
        assert status == 200  # the header decides; the parameter is ignored
    else:
        assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")


async def test_two_authorization_headers(bridge: BridgeClient, homeserver: FakeHomeserver) -> None:
    resp = await bridge.post(
        "/_synapse/mas/provision_user",
        json={"localpart": "alice"},
        headers=[("Authorization", f"Bearer {SECRET}"), ("Authorization", f"Bearer {SECRET}")],
    )
    answer = await resp.json()
    assert (resp.status, answer["errcode"]) == (403, "M_FORBIDDEN")
    assert homeserver.requests == []


async def test_no_secret_is_ever_accepted_when_it_is_a_client_token(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    """The secret is not a client-server token: on /_matrix it is introspected like any."""
    resp = await bridge.get(f"{V3}/account/whoami", headers={"Authorization": f"Bearer {SECRET}"})
    assert resp.status == 401
    assert homeserver.requests == []


@pytest.mark.parametrize("endpoint", sorted(VALID_CALLS))
async def test_answers_are_uncacheable_json(bridge: BridgeClient, endpoint: str) -> None:
    body, query = VALID_CALLS[endpoint]
    path = f"/_synapse/mas/{endpoint}"
    resp = await (
        bridge.get(path, params=query, headers=MAS)
        if body is None
        else bridge.post(path, json=body, headers=MAS)
    )
    assert resp.headers["Cache-Control"] == "no-cache, no-store, must-revalidate"
    if resp.status != 204:
        assert resp.content_type == "application/json"
    resp = await bridge.request(
        "GET" if body is None else "POST", path, headers={"Authorization": "Bearer wrong"}
    )
    assert resp.status == 403
    assert resp.headers["Cache-Control"] == "no-cache, no-store, must-revalidate"


async def test_wrong_method_is_405(bridge: BridgeClient, homeserver: FakeHomeserver) -> None:
    resp = await bridge.get("/_synapse/mas/provision_user", headers=MAS)
    assert (resp.status, await resp.json()) == (
        405,
        {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"},
    )
    resp = await bridge.delete("/_synapse/mas/sync_devices", headers=MAS)
    assert resp.status == 405
    resp = await bridge.post("/_synapse/mas/query_user", headers=MAS)
    assert resp.status == 405
    resp = await bridge.post("/_synapse/mas/nothing", headers=MAS)
    assert resp.status == 404
    assert homeserver.requests == []


async def test_head_is_get(bridge: BridgeClient, accounts: FakeAccounts) -> None:
    resp = await bridge.head(
        "/_synapse/mas/is_localpart_available", params={"localpart": "alice"}, headers=MAS
    )
    assert resp.status == 200


async def test_not_served_without_issuer_kind_mas(
    aiohttp_client: AiohttpClient, mas_issuer: FakeIssuer, homeserver: FakeHomeserver
) -> None:
    config = bridge_config(mas_issuer.url, homeserver.url)
    bridge = await start_bridge(aiohttp_client, config)
    resp = await bridge.post("/_synapse/mas/provision_user", json={"localpart": "a"}, headers=MAS)
    assert resp.status == 404
    assert homeserver.requests == []


@pytest.mark.parametrize("secret", [SECRET, "anything"])
async def test_admin_api_stays_closed(
    bridge: BridgeClient, homeserver: FakeHomeserver, secret: str
) -> None:
    resp = await bridge.get(
        f"/_synapse/admin/v2/users/{mxid('alice')}", headers={"Authorization": f"Bearer {secret}"}
    )
    assert resp.status == 403
    assert homeserver.requests == []


# -- request bodies ---------------------------------------------------------------------

POST_ENDPOINTS = sorted(e for e, (body, _) in VALID_CALLS.items() if body is not None)
# Endpoints with more than one required field: {} is two errors, so M_BAD_JSON.
SEVERAL_REQUIRED = {
    "delete_user",
    "set_displayname",
    "upsert_device",
    "update_device_display_name",
    "delete_device",
    "sync_devices",
}


@pytest.mark.parametrize("endpoint", POST_ENDPOINTS)
@pytest.mark.parametrize(
    ("raw", "errcode"),
    [
        (b"", "M_NOT_JSON"),
        (b"localpart=alice", "M_NOT_JSON"),
        (b'{"localpart": "al\xffice"}', "M_NOT_JSON"),
        (b'{"localpart": "alice", "n": NaN}', "M_NOT_JSON"),
        (b"[]", "M_BAD_JSON"),
        (b'"alice"', "M_BAD_JSON"),
        (b"1", "M_BAD_JSON"),
        (b"null", "M_BAD_JSON"),
    ],
)
async def test_bodies_that_are_not_a_json_object(
    bridge: BridgeClient, homeserver: FakeHomeserver, endpoint: str, raw: bytes, errcode: str
) -> None:
    status, answer = await call(bridge, endpoint, raw=raw)
    assert (status, answer["errcode"]) == (400, errcode)
    assert isinstance(answer["error"], str)
    assert homeserver.requests == []


@pytest.mark.parametrize("endpoint", POST_ENDPOINTS)
async def test_empty_object(
    bridge: BridgeClient, homeserver: FakeHomeserver, endpoint: str
) -> None:
    status, answer = await call(bridge, endpoint, {})
    expected = "M_BAD_JSON" if endpoint in SEVERAL_REQUIRED else "M_MISSING_PARAM"
    assert (status, answer["errcode"]) == (400, expected)
    assert "Field required" in answer["error"]
    assert homeserver.requests == []


MALFORMED: list[tuple[str, dict[str, object], str]] = [
    # One missing field.
    ("delete_user", {"localpart": "alice"}, "M_MISSING_PARAM"),
    ("set_displayname", {"localpart": "alice"}, "M_MISSING_PARAM"),
    ("upsert_device", {"localpart": "alice"}, "M_MISSING_PARAM"),
    ("update_device_display_name", {"localpart": "alice", "device_id": "D"}, "M_MISSING_PARAM"),
    ("delete_device", {"device_id": "D"}, "M_MISSING_PARAM"),
    ("sync_devices", {"localpart": "alice"}, "M_MISSING_PARAM"),
    # A missing field and a wrong one: two errors.
    ("delete_user", {"erase": "false"}, "M_BAD_JSON"),
    # Strict types: no coercion, null is not a string.
    ("provision_user", {"localpart": 1}, "M_BAD_JSON"),
    ("provision_user", {"localpart": None}, "M_BAD_JSON"),
    ("provision_user", {"localpart": ["alice"]}, "M_BAD_JSON"),
    ("provision_user", {"localpart": "alice", "set_displayname": 1}, "M_BAD_JSON"),
    ("provision_user", {"localpart": "alice", "unset_displayname": "true"}, "M_BAD_JSON"),
    ("provision_user", {"localpart": "alice", "unset_displayname": None}, "M_BAD_JSON"),
    ("provision_user", {"localpart": "alice", "unset_avatar_url": 1}, "M_BAD_JSON"),
    ("provision_user", {"localpart": "alice", "set_avatar_url": False}, "M_BAD_JSON"),
    ("provision_user", {"localpart": "alice", "set_emails": "a@example.org"}, "M_BAD_JSON"),
    ("provision_user", {"localpart": "alice", "set_emails": [1]}, "M_BAD_JSON"),
    ("provision_user", {"localpart": "alice", "set_emails": ["a@b", None]}, "M_BAD_JSON"),
    ("provision_user", {"localpart": "alice", "unset_emails": "yes"}, "M_BAD_JSON"),
    ("provision_user", {"localpart": "alice", "locked": "false"}, "M_BAD_JSON"),
    ("provision_user", {"localpart": "alice", "locked": 0}, "M_BAD_JSON"),
    # Both of a pair, whatever the values, even with other errors: M_INVALID_PARAM.
    (
        "provision_user",
        {"localpart": "a", "set_displayname": "A", "unset_displayname": False},
        "M_INVALID_PARAM",
    ),
    (
        "provision_user",
        {"localpart": "a", "set_displayname": None, "unset_displayname": True},
        "M_INVALID_PARAM",
    ),
    (
        "provision_user",
        {"localpart": "a", "set_avatar_url": "mxc://x/y", "unset_avatar_url": True},
        "M_INVALID_PARAM",
    ),
    (
        "provision_user",
        {"localpart": "a", "set_emails": None, "unset_emails": True},
        "M_INVALID_PARAM",
    ),
    ("provision_user", {"set_emails": [], "unset_emails": False}, "M_INVALID_PARAM"),
    ("delete_user", {"localpart": "alice", "erase": "true"}, "M_BAD_JSON"),
    ("delete_user", {"localpart": "alice", "erase": None}, "M_BAD_JSON"),
    ("delete_user", {"localpart": "alice", "erase": 1}, "M_BAD_JSON"),
    ("reactivate_user", {"localpart": 5}, "M_BAD_JSON"),
    ("set_displayname", {"localpart": "alice", "displayname": None}, "M_BAD_JSON"),
    ("set_displayname", {"localpart": "alice", "displayname": 5}, "M_BAD_JSON"),
    ("unset_displayname", {"localpart": False}, "M_BAD_JSON"),
    ("upsert_device", {"localpart": "alice", "device_id": 7}, "M_BAD_JSON"),
    ("upsert_device", {"localpart": "alice", "device_id": "D", "display_name": 7}, "M_BAD_JSON"),
    (
        "update_device_display_name",
        {"localpart": "a", "device_id": "D", "display_name": None},
        "M_BAD_JSON",
    ),
    ("delete_device", {"localpart": "alice", "device_id": None}, "M_BAD_JSON"),
    ("sync_devices", {"localpart": "alice", "devices": None}, "M_BAD_JSON"),
    ("sync_devices", {"localpart": "alice", "devices": "DEVICEAAAA"}, "M_BAD_JSON"),
    ("sync_devices", {"localpart": "alice", "devices": [1]}, "M_BAD_JSON"),
    ("sync_devices", {"localpart": "alice", "devices": {"DEVICEAAAA": True}}, "M_BAD_JSON"),
    ("allow_cross_signing_reset", {"localpart": None}, "M_BAD_JSON"),
]


@pytest.mark.parametrize(("endpoint", "body", "errcode"), MALFORMED)
async def test_malformed_body(
    bridge: BridgeClient,
    homeserver: FakeHomeserver,
    endpoint: str,
    body: dict[str, object],
    errcode: str,
) -> None:
    status, answer = await call(bridge, endpoint, body)
    assert (status, answer["errcode"]) == (400, errcode)
    assert "validation error" in answer["error"]
    assert homeserver.requests == []


@pytest.mark.parametrize(
    ("endpoint", "query", "errcode", "error"),
    [
        ("query_user", {}, "M_MISSING_PARAM", "Missing string query parameter 'localpart'"),
        ("is_localpart_available", {}, "M_UNKNOWN", "Missing localpart"),
        ("query_user", {"localpart": "älice"}, "M_UNKNOWN", "must be ascii"),
        ("is_localpart_available", {"localpart": "älice"}, "M_UNKNOWN", "must be ascii"),
    ],
)
async def test_malformed_query(
    bridge: BridgeClient,
    homeserver: FakeHomeserver,
    endpoint: str,
    query: dict[str, str],
    errcode: str,
    error: str,
) -> None:
    status, answer = await call(bridge, endpoint, query=query)
    assert (status, answer["errcode"]) == (400, errcode)
    assert error in answer["error"]
    assert homeserver.requests == []


async def test_optional_fields_and_unknown_keys(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    body = {
        "localpart": "alice",
        "set_displayname": None,
        "set_avatar_url": None,
        "set_emails": None,
        "locked": None,
        "something_new": {"MAS": "may add keys"},
    }
    status, answer = await call(bridge, "provision_user", body)
    assert (status, answer) == (201, {})


# -- what is done, and the status codes ---------------------------------------------------


def writes(homeserver: FakeHomeserver) -> list[str]:
    """Every request that changes something on the homeserver."""
    return [f"{r.method} {r.raw_path}" for r in homeserver.requests if r.method != "GET"]


@pytest.mark.parametrize(
    "endpoint", sorted(set(VALID_CALLS) - {"provision_user", "is_localpart_available"})
)
async def test_unknown_user_is_404_and_nothing_is_done(
    bridge: BridgeClient, homeserver: FakeHomeserver, endpoint: str
) -> None:
    body, query = VALID_CALLS[endpoint]
    status, answer = await call(bridge, endpoint, body, query=query)
    assert (status, answer) == (404, {"errcode": "M_NOT_FOUND", "error": "User not found"})
    assert writes(homeserver) == []


@pytest.mark.parametrize("localpart", ["oidc-bridge", "", "al:ice"])
async def test_users_the_bridge_never_acts_as_are_not_found(
    bridge: BridgeClient, homeserver: FakeHomeserver, accounts: FakeAccounts, localpart: str
) -> None:
    accounts.users.add(mxid(localpart))
    status, answer = await call(bridge, "delete_user", {"localpart": localpart, "erase": True})
    assert (status, answer["errcode"]) == (404, "M_NOT_FOUND")
    assert writes(homeserver) == []


async def test_provision_user_creates_then_updates(
    bridge: BridgeClient, homeserver: FakeHomeserver, accounts: FakeAccounts
) -> None:
    body = {"localpart": "alice", "set_emails": ["alice@example.org"], "locked": False}
    assert await call(bridge, "provision_user", body) == (201, {})
    # As Synapse: a new user without set_displayname is named after its localpart.
    assert accounts.displaynames == {mxid("alice"): "alice"}
    assert [json.loads(r.body) for r in homeserver.of_kind("register")] == [
        {"type": "m.login.application_service", "username": "alice", "inhibit_login": True}
    ]
    body = {"localpart": "alice", "set_displayname": "Alice", "locked": False}
    assert await call(bridge, "provision_user", body) == (200, {})
    assert accounts.displaynames == {mxid("alice"): "Alice"}
    assert await call(bridge, "provision_user", {"localpart": "alice"}) == (200, {})
    assert accounts.displaynames == {mxid("alice"): "Alice"}
    body = {"localpart": "alice", "unset_displayname": True}
    assert await call(bridge, "provision_user", body) == (200, {})
    assert accounts.displaynames == {mxid("alice"): ""}
    assert len(homeserver.of_kind("register")) == 1


@pytest.mark.parametrize(
    ("localpart", "errcode", "error"),
    [
        ("Alice", "M_INVALID_USERNAME", "can only contain"),
        ("al ice", "M_INVALID_USERNAME", "can only contain"),
        ("", "M_INVALID_USERNAME", "cannot be empty"),
        ("_alice", "M_INVALID_USERNAME", "may not begin with _"),
        ("oidc-bridge", "M_EXCLUSIVE", "This user ID is reserved."),
        ("a" * 250, "M_INVALID_USERNAME", "may not be longer than 255"),
        ("taken", "M_USER_IN_USE", "User ID already taken."),
        ("12345", "M_INVALID_USERNAME", "Numeric user IDs are reserved"),
    ],
)
async def test_localparts_that_are_not_available(
    bridge: BridgeClient,
    homeserver: FakeHomeserver,
    accounts: FakeAccounts,
    localpart: str,
    errcode: str,
    error: str,
) -> None:
    accounts.users.add(mxid("taken"))
    status, answer = await call(bridge, "is_localpart_available", query={"localpart": localpart})
    assert (status, answer["errcode"]) == (400, errcode)
    assert error in answer["error"]
    if localpart != "12345":  # Synapse answers digits at creation too, as invalid
        status, answer = await call(bridge, "provision_user", {"localpart": localpart})
        if localpart == "taken":
            assert status == 200  # provision_user updates an existing user
        else:
            assert (status, answer["errcode"]) == (400, errcode)
    assert homeserver.of_kind("register") == []


async def test_other_appservices_namespaces_are_reserved(
    aiohttp_client: AiohttpClient,
    mas_issuer: FakeIssuer,
    homeserver: FakeHomeserver,
    accounts: FakeAccounts,
    tmp_path: Any,
) -> None:
    registration = tmp_path / "irc.yaml"
    registration.write_text(
        "namespaces:\n  users:\n    - exclusive: true\n      regex: '@irc_.*'\n"
    )
    config = mas_config(
        mas_issuer, homeserver, {"appservice": {"other_registrations": [str(registration)]}}
    )
    bridge = await start_bridge(aiohttp_client, config)
    status, answer = await call(bridge, "is_localpart_available", query={"localpart": "irc_bob"})
    assert (status, answer["errcode"]) == (400, "M_EXCLUSIVE")
    assert answer["error"] == "This user ID is reserved by an application service."


async def test_available(bridge: BridgeClient, accounts: FakeAccounts) -> None:
    assert await call(bridge, "is_localpart_available", query={"localpart": "new.user=1"}) == (
        200,
        {},
    )


async def test_query_user_without_the_admin_api(
    bridge: BridgeClient, accounts: FakeAccounts
) -> None:
    accounts.users.add(mxid("alice"))
    accounts.displaynames[mxid("alice")] = "Alice"
    status, answer = await call(bridge, "query_user", query={"localpart": "alice"})
    assert (status, answer) == (
        200,
        {
            "user_id": mxid("alice"),
            "display_name": "Alice",
            "avatar_url": None,
            "is_suspended": False,
            "is_deactivated": False,
        },
    )


async def test_reactivation_cannot_be_done_without_the_admin_api(
    bridge: BridgeClient, homeserver: FakeHomeserver, accounts: FakeAccounts
) -> None:
    accounts.users.add(mxid("alice"))
    status, answer = await call(bridge, "reactivate_user", {"localpart": "alice"})
    assert (status, answer["errcode"]) == (404, "M_UNRECOGNIZED")
    assert "Reactivating a user cannot be done" in answer["error"]
    assert writes(homeserver) == []


async def test_device_status_codes(
    bridge: BridgeClient, homeserver: FakeHomeserver, accounts: FakeAccounts
) -> None:
    accounts.users.add(mxid("alice"))
    device = {"localpart": "alice", "device_id": "DEVICEAAAA"}
    assert await call(bridge, "upsert_device", {**device, "display_name": "X"}) == (201, {})
    assert await call(bridge, "upsert_device", device) == (200, {})
    assert await call(bridge, "update_device_display_name", {**device, "display_name": "Y"}) == (
        200,
        {},
    )
    unknown = {"localpart": "alice", "device_id": "NOSUCHDEVICE", "display_name": "Y"}
    assert await call(bridge, "update_device_display_name", unknown) == (
        404,
        {"errcode": "M_NOT_FOUND", "error": "Not found"},
    )
    # Looked up, never created by the rename (an appservice PUT would create it).
    assert "NOSUCHDEVICE" not in accounts.devices(mxid("alice"))
    too_long = {**device, "display_name": "x" * 101}
    status, answer = await call(bridge, "update_device_display_name", too_long)
    assert (status, answer["errcode"]) == (400, "M_TOO_LARGE")
    status, answer = await call(bridge, "upsert_device", too_long)
    assert (status, answer["errcode"]) == (400, "M_TOO_LARGE")
    # 204 and no body, known device or not.
    resp = await bridge.post("/_synapse/mas/delete_device", json=device, headers=MAS)
    assert (resp.status, await resp.read()) == (204, b"")
    resp = await bridge.post(
        "/_synapse/mas/delete_device", json={**device, "device_id": "NONE"}, headers=MAS
    )
    assert resp.status == 204
    assert accounts.devices(mxid("alice")) == set()


async def test_sync_devices(
    bridge: BridgeClient, homeserver: FakeHomeserver, accounts: FakeAccounts
) -> None:
    accounts.users.add(mxid("alice"))
    body = {"localpart": "alice", "devices": ["DEVICEAAAA", "DEVICEBBBB"]}
    assert await call(bridge, "sync_devices", body) == (200, {})
    assert accounts.devices(mxid("alice")) == {"DEVICEAAAA", "DEVICEBBBB"}
    body = {"localpart": "alice", "devices": ["DEVICECCCC", "DEVICEBBBB"]}
    assert await call(bridge, "sync_devices", body) == (200, {})
    assert accounts.devices(mxid("alice")) == {"DEVICEBBBB", "DEVICECCCC"}
    assert await call(bridge, "sync_devices", {"localpart": "alice", "devices": []}) == (200, {})
    assert accounts.devices(mxid("alice")) == set()


async def test_delete_user(
    bridge: BridgeClient, homeserver: FakeHomeserver, accounts: FakeAccounts
) -> None:
    accounts.users.add(mxid("alice"))
    assert await call(bridge, "delete_user", {"localpart": "alice", "erase": True}) == (200, {})
    (deactivation,) = [r for r in homeserver.requests if r.raw_path.endswith("/deactivate")]
    assert json.loads(deactivation.body) == {"erase": True}
    assert deactivation.query["user_id"] == mxid("alice")


async def test_allow_cross_signing_reset_is_200_with_or_without_master_key(
    bridge: BridgeClient, accounts: FakeAccounts
) -> None:
    accounts.users.add(mxid("alice"))
    assert await call(bridge, "allow_cross_signing_reset", {"localpart": "alice"}) == (200, {})
    accounts.master_keys[mxid("alice")] = {"keys": {"ed25519:x": "x"}}
    assert await call(bridge, "allow_cross_signing_reset", {"localpart": "alice"}) == (200, {})


# -- client tokens and what MAS provisioned --------------------------------------------


async def test_a_client_token_works_only_while_mas_keeps_its_device(
    bridge: BridgeClient, mas_issuer: FakeIssuer, accounts: FakeAccounts
) -> None:
    """Nothing is created on first sight; a device MAS deletes ends its cached tokens."""
    mas_issuer.tokens["alice-token"] = active_claims("alice", "DEVICEAAAA")
    client = {"Authorization": "Bearer alice-token"}
    accounts.users.add(mxid("alice"))

    resp = await bridge.get(f"{V3}/account/whoami", headers=client)
    assert (resp.status, (await resp.json())["errcode"]) == (401, "M_UNKNOWN_TOKEN")

    device = {"localpart": "alice", "device_id": "DEVICEAAAA"}
    assert await call(bridge, "upsert_device", device) == (201, {})
    resp = await bridge.get(f"{V3}/account/whoami", headers=client)
    assert resp.status == 200
    introspections = len(mas_issuer.introspections)
    resp = await bridge.get(f"{V3}/account/whoami", headers=client)
    assert resp.status == 200
    assert len(mas_issuer.introspections) == introspections  # cached

    assert (
        await bridge.post("/_synapse/mas/delete_device", json=device, headers=MAS)
    ).status == 204
    # The issuer still says active; the cache was dropped and the device is gone.
    resp = await bridge.get(f"{V3}/account/whoami", headers=client)
    assert (resp.status, (await resp.json())["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    assert len(mas_issuer.introspections) == introspections + 1
