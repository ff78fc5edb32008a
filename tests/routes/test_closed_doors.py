"""Closed doors (and Synapse's MAS-mode answer to each), path normalisation and the
admin API allow-list."""

from __future__ import annotations

import pytest
from yarl import URL

from bridge.errors import BadRequest
from bridge.http.paths import routing_path
from bridge.routes.closed_doors import (
    APPSERVICE_ONLY,
    admin_api_allowed,
    closed_door,
    mas_mode_answer,
)
from tests.fakes import BridgeClient, FakeHomeserver, FakeIssuer
from tests.routes.conftest import ALICE

AUTH = {"Authorization": f"Bearer {ALICE}"}

PREFIXES = ["/_matrix/client/r0", "/_matrix/client/v3", "/_matrix/client/unstable/org.example"]

CLOSED = [
    ("POST", "account/deactivate"),
    ("POST", "account/password"),
    ("POST", "account/password/email/requestToken"),
    ("POST", "account/3pid"),
    ("POST", "account/3pid/add"),
    ("POST", "account/3pid/bind"),
    ("POST", "account/3pid/delete"),
    ("POST", "account/3pid/unbind"),
    ("POST", "account/3pid/email/requestToken"),
    ("POST", "delete_devices"),
    ("DELETE", "devices/ABCDEF"),
    ("GET", "register"),
    ("POST", "register"),
    ("HEAD", "register"),
    ("GET", "register/available"),
    ("POST", "register/email/requestToken"),
    ("POST", "login/get_token"),
    ("POST", "logout"),
    ("POST", "logout/all"),
    ("GET", "add_threepid/email/submit_token"),
    ("POST", "add_threepid/msisdn/submit_token"),
    ("GET", "registration/email/submit_token"),
]

OPEN = [
    ("GET", "account/3pid"),
    ("GET", "account/whoami"),
    ("PUT", "devices/ABCDEF"),
    ("GET", "devices/ABCDEF"),
    ("GET", "devices"),
    ("POST", "login"),
    ("GET", "login"),
    ("POST", "keys/upload"),
    ("PUT", "rooms/!r:example.org/send/m.room.message/txn1"),
]


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize(("method", "endpoint"), CLOSED)
def test_closed_door(prefix: str, method: str, endpoint: str) -> None:
    what = closed_door(method, f"{prefix}/{endpoint}")
    assert what is not None
    assert what  # names what the user tried to do


@pytest.mark.parametrize(
    "path",
    [
        "/_matrix/client/v1/register/m.login.registration_token/validity",
        "/_matrix/client/v1/login/get_token",
        "/_matrix/client/unstable/org.matrix.msc3882/login/get_token",
    ],
)
def test_closed_door_v1(path: str) -> None:
    assert closed_door("POST" if "login" in path else "GET", path) is not None


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize(("method", "endpoint"), OPEN)
def test_open_door(prefix: str, method: str, endpoint: str) -> None:
    assert closed_door(method, f"{prefix}/{endpoint}") is None


V3 = "/_matrix/client/v3"


@pytest.mark.parametrize(
    ("method", "raw_path", "answer"),
    [
        # Servlets Synapse does not register in MAS mode, any prefix or spelling.
        ("POST", f"{V3}/account/deactivate", (404, "M_UNRECOGNIZED")),
        ("POST", "/_matrix/client/r0/account/password", (404, "M_UNRECOGNIZED")),
        ("POST", f"{V3}/account/3pid/add", (404, "M_UNRECOGNIZED")),
        ("POST", f"{V3}/delete_devices", (404, "M_UNRECOGNIZED")),
        ("POST", "/_matrix/client/api/v1/logout", (404, "M_UNRECOGNIZED")),
        ("POST", "/_matrix/client/v1/login/get_token", (404, "M_UNRECOGNIZED")),
        ("GET", f"{V3}/register/available", (404, "M_UNRECOGNIZED")),
        ("POST", f"{V3}//account//deactivate/", (404, "M_UNRECOGNIZED")),
        ("POST", f"{V3}/account/%64eactivate", (404, "M_UNRECOGNIZED")),
        # Routed, other methods only.
        ("GET", f"{V3}/register", (405, "M_UNRECOGNIZED")),
        ("HEAD", f"{V3}/register", (405, "M_UNRECOGNIZED")),
        ("PUT", "/_matrix/client/unstable/register", (405, "M_UNRECOGNIZED")),
        ("PUT", f"{V3}/account/3pid", (405, "M_UNRECOGNIZED")),
        ("DELETE", f"{V3}/account/3pid/bind", (405, "M_UNRECOGNIZED")),
        ("DELETE", f"{V3}/devices", (405, "M_UNRECOGNIZED")),
        # Routed, and refused by the servlet.
        ("POST", f"{V3}/register", (403, "M_FORBIDDEN")),
        ("POST", f"{V3}/account/3pid", (404, "M_UNRECOGNIZED")),
        ("DELETE", f"{V3}/devices/DEVA", (404, "M_UNRECOGNIZED")),
        ("DELETE", f"{V3}/devices/", (404, "M_UNRECOGNIZED")),
        ("DELETE", f"{V3}/devices/A%2FB", (404, "M_UNRECOGNIZED")),
        # Not routed as the same servlet: a prefix Synapse does not use there, a
        # trailing slash, a second segment.
        ("POST", "/_matrix/client/v1/register", (404, "M_UNRECOGNIZED")),
        ("POST", f"{V3}/register/", (404, "M_UNRECOGNIZED")),
        ("DELETE", f"{V3}/devices/A/B", (404, "M_UNRECOGNIZED")),
        # Served by Synapse in MAS mode; the bridge's own refusal.
        ("POST", f"{V3}/account/3pid/bind", (403, "M_FORBIDDEN")),
        ("POST", f"{V3}/account/3pid/unbind", (403, "M_FORBIDDEN")),
    ],
)
def test_mas_mode_answer(method: str, raw_path: str, answer: tuple[int, str]) -> None:
    """As observed on Synapse 1.163 in MAS mode (tests/integration/test_mas_mode_doors.py)."""
    assert mas_mode_answer(method, raw_path) == answer


def test_closed_door_after_decoding() -> None:
    path = routing_path("/_matrix/client/v3/account/%64eactivate/")
    assert closed_door("POST", path) == "Account deactivation"


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("/_matrix/client/v3/sync/", "/_matrix/client/v3/sync"),
        ("/_matrix/client/v3/sync?since=s//1", "/_matrix/client/v3/sync"),
        ("/", "/"),
        (
            "/_matrix/media/v3/download/example.org/a...b",
            "/_matrix/media/v3/download/example.org/a...b",
        ),
        ("/a/.../b", "/a/.../b"),
        ("/_matrix/client/v3/devices/A%2FB", "/_matrix/client/v3/devices/A%2FB"),
    ],
)
def test_routing_path(raw: str, normal: str) -> None:
    assert routing_path(raw) == normal


@pytest.mark.parametrize(
    "raw",
    [
        "/_matrix/client/v3/./account/deactivate",
        "/_matrix/client/v3/rooms/../account/deactivate",
        "/_matrix/client/v3/..",
        "/_matrix/client/v3/./",
        "/_matrix//client///v3/sync",
        "/_matrix/client/v3/sync//",
        "//",
    ],
)
def test_routing_path_refuses_dot_and_empty_segments(raw: str) -> None:
    with pytest.raises(BadRequest) as info:
        routing_path(raw)
    assert (info.value.status, info.value.errcode) == (400, "M_UNRECOGNIZED")


ALLOWLIST = ("/_synapse/admin/v1/rooms", "/_synapse/admin/v2/users/")


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/_synapse/admin/v1/rooms", True),
        ("/_synapse/admin/v1/rooms/x", True),
        ("/_synapse/admin/v1/rooms/x/members", True),
        ("/_synapse/admin/v1/roomsx", False),
        ("/_synapse/admin/v1/room", False),
        ("/_synapse/admin/v2/users", True),
        ("/_synapse/admin/v2/users/@a:example.org", True),
        ("/_synapse/admin/v2/usersx", False),
        ("/_synapse/admin/v1/users/@a:example.org", False),
    ],
)
def test_admin_api_allowed(path: str, allowed: bool) -> None:
    assert admin_api_allowed(ALLOWLIST, path) is allowed


def test_admin_api_empty_allowlist() -> None:
    assert not admin_api_allowed((), "/_synapse/admin/v1/rooms")


@pytest.mark.parametrize(
    "path",
    [
        "/_matrix/client/v1/appservice/any-id/ping",
        "/_matrix/client/unstable/appservice/any-id/ping",
        "/_matrix/client/unstable/io.element.msc4512/appservice/fed_proxy",
        "/_matrix/client/unstable/io.element.msc4502/rooms/!r:example.org/is_joined",
        "/_matrix/client/v3/directory/list/appservice/net/!r:example.org",
        "/_matrix/client/r0/directory/list/appservice",
    ],
)
def test_appservice_only_endpoints(path: str) -> None:
    """docs/appservice-privileges.md section 3(b)."""
    assert any(rx.match(path) for rx in APPSERVICE_ONLY)


@pytest.mark.parametrize(
    "path",
    [
        "/_matrix/client/v3/rooms/!r:example.org/state/m.room.member/appservice",
        "/_matrix/client/v3/rooms/!r:example.org/joined_members",
    ],
)
def test_appservice_only_is_not_a_substring_match(path: str) -> None:
    assert not any(rx.match(path) for rx in APPSERVICE_ONLY)


# ---------------------------------------------------------------------------------------
# Through the bridge: Synapse's MAS-mode status and errcode, the account URL named, and
# nothing forwarded (README, "Closed doors").


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", f"{V3}/account/deactivate", 404),
        ("POST", f"{V3}/account/password", 404),
        ("POST", f"{V3}/account/3pid", 404),
        ("PUT", f"{V3}/account/3pid", 405),
        ("POST", f"{V3}/account/3pid/add", 404),
        ("POST", f"{V3}/account/3pid/bind", 403),
        ("GET", "/_matrix/client/unstable/add_threepid/email/submit_token", 404),
        ("POST", f"{V3}/delete_devices", 404),
        ("DELETE", f"{V3}/devices/DEVA", 404),
        ("DELETE", f"{V3}/devices", 405),
        ("GET", f"{V3}/register", 405),
        ("GET", f"{V3}/register/available?username=x", 404),
        ("POST", "/_matrix/client/v1/login/get_token", 404),
        ("POST", "/_matrix/client/api/v1/logout", 404),
        ("POST", "/_matrix/client/api/v1/logout/all", 404),
        ("POST", f"{V3}/account/%64eactivate/", 404),
    ],
)
async def test_closed_door_answers_as_synapse_in_mas_mode(
    bridge: BridgeClient,
    homeserver: FakeHomeserver,
    issuer: FakeIssuer,
    method: str,
    path: str,
    status: int,
) -> None:
    resp = await bridge.request(method, URL(path, encoded=True), headers=AUTH, json={})
    answer = await resp.json()
    assert resp.status == status
    assert answer["errcode"] == ("M_FORBIDDEN" if status == 403 else "M_UNRECOGNIZED")
    assert issuer.url in answer["error"]  # no account URL configured: the issuer's
    assert homeserver.requests == []
    assert issuer.introspections == []  # refused before the token is looked at


AS_TYPE = "m.login.application_service"


@pytest.mark.parametrize(
    ("query", "body", "headers", "status", "errcode"),
    [
        ("", b'{"username": "intruder", "password": "x"}', AUTH, 403, "M_FORBIDDEN"),
        ("?kind=guest", b"{}", AUTH, 403, "M_FORBIDDEN"),
        ("", b"not json", AUTH, 400, "M_NOT_JSON"),
        ("", b"", AUTH, 400, "M_NOT_JSON"),
        ("", b'{"type": NaN}', AUTH, 400, "M_NOT_JSON"),
        ("", b"[1]", AUTH, 400, "M_BAD_JSON"),
        ("", f'{{"type": "{AS_TYPE}", "username": "x"}}'.encode(), AUTH, 400,
         "M_APPSERVICE_LOGIN_UNSUPPORTED"),
        ("?kind=guest", f'{{"type": "{AS_TYPE}", "inhibit_login": true, "username": "x"}}'.encode(),
         AUTH, 403, "M_UNKNOWN"),
        ("?kind=admin", f'{{"type": "{AS_TYPE}", "inhibit_login": true, "username": "x"}}'.encode(),
         AUTH, 400, "M_UNRECOGNIZED"),
        ("", f'{{"type": "{AS_TYPE}", "inhibit_login": true}}'.encode(), AUTH, 400, "M_UNKNOWN"),
        ("", f'{{"type": "{AS_TYPE}", "inhibit_login": true, "username": "x"}}'.encode(), {}, 400,
         "M_UNKNOWN"),
        # Synapse: 401 M_UNKNOWN_TOKEN, the token not being an appservice's.
        ("", f'{{"type": "{AS_TYPE}", "inhibit_login": true, "username": "x"}}'.encode(), AUTH,
         403, "M_FORBIDDEN"),
    ],
)  # fmt: skip
async def test_registration_answers_as_synapse_in_mas_mode(
    bridge: BridgeClient,
    homeserver: FakeHomeserver,
    query: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    errcode: str,
) -> None:
    resp = await bridge.post(
        f"{V3}/register{query}",
        data=body,
        headers={**headers, "Content-Type": "application/json"},
    )
    answer = await resp.json()
    assert (resp.status, answer["errcode"]) == (status, errcode), answer
    assert homeserver.requests == []


async def test_appservice_login_answers_as_synapse_in_mas_mode(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    """Synapse in MAS mode has no ``/login`` at all (with ``issuer.kind: mas`` the
    bridge routes ``/login`` to MAS's compatibility layer: tests/routes/test_mas_compat.py);
    ``api/v1`` is not MAS's."""
    body = {"type": AS_TYPE, "identifier": {"type": "m.id.user", "user": "admin"}}
    resp = await bridge.post("/_matrix/client/api/v1/login", json=body)
    assert (resp.status, (await resp.json())["errcode"]) == (404, "M_UNRECOGNIZED")
    assert homeserver.requests == []
