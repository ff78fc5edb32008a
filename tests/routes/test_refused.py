"""Closed doors, path normalisation and the admin API allow-list."""

from __future__ import annotations

import pytest

from bridge.errors import BadRequest
from bridge.paths import normalize
from bridge.routes.refused import APPSERVICE_ONLY, admin_api_allowed, closed_door

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


def test_closed_door_after_normalisation() -> None:
    path = normalize("/_matrix/client/v3//account//deactivate/")
    assert closed_door("POST", path) == "Account deactivation"


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("/_matrix//client///v3/sync", "/_matrix/client/v3/sync"),
        ("/_matrix/client/v3/sync/", "/_matrix/client/v3/sync"),
        ("/_matrix/client/v3/sync//", "/_matrix/client/v3/sync"),
        ("/", "/"),
        ("//", "/"),
        (
            "/_matrix/media/v3/download/example.org/a...b",
            "/_matrix/media/v3/download/example.org/a...b",
        ),
        ("/a/.../b", "/a/.../b"),
    ],
)
def test_normalize(raw: str, normal: str) -> None:
    assert normalize(raw) == normal


@pytest.mark.parametrize(
    "raw",
    [
        "/_matrix/client/v3/./account/deactivate",
        "/_matrix/client/v3/rooms/../account/deactivate",
        "/_matrix/client/v3/..",
        "/_matrix/client/v3/./",
    ],
)
def test_normalize_refuses_dot_segments(raw: str) -> None:
    with pytest.raises(BadRequest) as info:
        normalize(raw)
    assert info.value.status == 400


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
