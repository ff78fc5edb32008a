"""Where the bearer token comes from, and which endpoints need none."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from bridge.auth.middleware import bearer_token, is_public
from bridge.errors import BadRequest, MissingToken

SYNC = "/_matrix/client/v3/sync"


def token_of(path: str = SYNC, *authorization: str) -> str | None:
    headers = CIMultiDict(("Authorization", value) for value in authorization)
    return bearer_token(make_mocked_request("GET", path, headers=headers))


def test_header() -> None:
    assert token_of(SYNC, "Bearer abc") == "abc"


def test_header_scheme_is_case_insensitive() -> None:
    assert token_of(SYNC, "bearer abc") == "abc"


def test_query_parameter() -> None:
    assert token_of(f"{SYNC}?access_token=abc") == "abc"


def test_header_and_equal_query_parameter() -> None:
    assert token_of(f"{SYNC}?access_token=abc", "Bearer abc") == "abc"


def test_no_token() -> None:
    assert token_of(SYNC) is None


def test_empty_query_parameter_is_no_token() -> None:
    assert token_of(f"{SYNC}?access_token=") is None


def test_empty_query_parameter_does_not_hide_the_header() -> None:
    assert token_of(f"{SYNC}?access_token=", "Bearer abc") == "abc"


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        (f"{SYNC}?access_token=abd", ("Bearer abc",)),
        (SYNC, ("Bearer abc", "Bearer abc")),
        (f"{SYNC}?access_token=abc&access_token=abc", ()),
    ],
)
def test_ambiguous_token_is_a_bad_request(path: str, headers: tuple[str, ...]) -> None:
    with pytest.raises(BadRequest) as info:
        token_of(path, *headers)
    assert info.value.status == 400


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "abc"])
def test_unusable_authorization_header(header: str) -> None:
    with pytest.raises(MissingToken) as info:
        token_of(SYNC, header)
    assert info.value.status == 401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/_matrix/client/versions"),
        ("HEAD", "/_matrix/client/versions"),
        ("GET", "/_matrix/client/v3/login"),
        ("POST", "/_matrix/client/r0/login"),
        ("GET", "/_matrix/client/v3/login/sso/redirect/oidc"),
        ("GET", "/_matrix/client/v3/publicRooms"),
        ("GET", "/_matrix/client/v3/profile/@alice:example.org"),
        ("GET", "/_matrix/media/v3/download/example.org/abc"),
        ("HEAD", "/_matrix/media/r0/thumbnail/example.org/abc"),
        ("POST", "/_matrix/client/unstable/org.matrix.msc4108/rendezvous"),
    ],
)
def test_public(method: str, path: str) -> None:
    assert is_public(method, path)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/_matrix/client/v3/rooms/!r:example.org/send/m.room.message/1"),
        ("GET", "/_matrix/client/v3/rooms/!r:example.org/messages"),
        ("GET", SYNC),
        ("POST", "/_matrix/client/versions"),
        ("POST", "/_matrix/client/v3/publicRooms"),
        ("PUT", "/_matrix/client/v3/profile/@alice:example.org/displayname"),
        ("POST", "/_matrix/media/v3/upload"),
        ("GET", "/_matrix/client/v1/media/download/example.org/abc"),
        ("GET", "/_matrix/client/v3/login/extra"),
    ],
)
def test_not_public(method: str, path: str) -> None:
    assert not is_public(method, path)
