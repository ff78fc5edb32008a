"""Token claims → Matrix identity (docs/design.md, "Token → identity")."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from bridge.auth.identity import DeviceID, Identity, UserID, device_scope, identity_from_claims
from bridge.errors import UnknownToken

API = "urn:matrix:client:api:*"
UNSTABLE_API = "urn:matrix:org.matrix.msc2967.client:api:*"


def identify(claims: Mapping[str, object], localpart_claim: str = "username") -> Identity:
    return identity_from_claims(claims, server_name="example.org", localpart_claim=localpart_claim)


def claims(scope: str, **extra: object) -> dict[str, object]:
    return {"scope": scope, "username": "alice", **extra}


def test_stable_scopes() -> None:
    identity = identify(claims(f"openid {API} {device_scope('ABCDEF')}"))
    assert identity == Identity(UserID("@alice:example.org"), DeviceID("ABCDEF"), "alice")


def test_unstable_scopes() -> None:
    identity = identify(claims(f"{UNSTABLE_API} {device_scope('ABCDEF', unstable=True)}"))
    assert (identity.user_id, identity.device_id) == ("@alice:example.org", "ABCDEF")


def test_device_scope_prefixes() -> None:
    assert device_scope("X") == "urn:matrix:client:device:X"
    assert device_scope("X", unstable=True) == "urn:matrix:org.matrix.msc2967.client:device:X"


@pytest.mark.parametrize(
    "raw",
    [
        {"username": "alice", "device_id": "ABC"},
        claims(f"openid {device_scope('ABC')}"),
        claims("urn:matrix:client:api:read"),
        {"scope": [API, device_scope("ABC")], "username": "alice"},
    ],
)
def test_no_api_scope(raw: dict[str, object]) -> None:
    with pytest.raises(UnknownToken, match="client API"):
        identify(raw)


def test_device_id_claim_is_preferred() -> None:
    identity = identify(claims(f"{API} {device_scope('FROMSCOPE')}", device_id="FROMCLAIM"))
    assert identity.device_id == "FROMCLAIM"


def test_device_id_claim_alone() -> None:
    assert identify(claims(API, device_id="ONLYCLAIM")).device_id == "ONLYCLAIM"


def test_stable_and_unstable_scope_for_one_device() -> None:
    scope = f"{API} {device_scope('ABC')} {device_scope('ABC', unstable=True)}"
    assert identify(claims(scope)).device_id == "ABC"


@pytest.mark.parametrize("api", [API, UNSTABLE_API])
def test_no_device_scope_is_a_device_less_identity(api: str) -> None:
    """As Synapse accepts such a token in MAS mode: the user, without a device."""
    identity = identify(claims(f"openid {api}"))
    assert identity == Identity(UserID("@alice:example.org"), None, "alice")
    with pytest.raises(AssertionError):
        _ = identity.device


@pytest.mark.parametrize(
    "scope",
    [
        f"{API} {device_scope('ONE')} {device_scope('TWO')}",
        f"{API} {device_scope('ONE')} {device_scope('TWO', unstable=True)}",
    ],
)
def test_two_devices(scope: str) -> None:
    with pytest.raises(UnknownToken, match="more than one device"):
        identify(claims(scope))


@pytest.mark.parametrize(
    "raw",
    [
        {"scp": [API, device_scope("ABC")], "username": "alice"},
        {"scp": f"{API} {device_scope('ABC')}", "username": "alice"},
    ],
)
def test_scp_claim(raw: dict[str, object]) -> None:
    assert identify(raw).device_id == "ABC"


@pytest.mark.parametrize(
    "raw",
    [
        # scope wins over scp, even when it grants less
        {"scope": "openid", "scp": [API], "username": "alice"},
        {"scp": [API, 7], "username": "alice"},
        {"scp": {"a": API}, "username": "alice"},
    ],
)
def test_scp_is_read_only_without_scope_and_only_as_strings(raw: dict[str, object]) -> None:
    with pytest.raises(UnknownToken, match="client API"):
        identify(raw)


@pytest.mark.parametrize(
    "raw",
    [
        claims(f"{API} {device_scope('')}"),
        claims(f"{API} {device_scope('a%20b')}"),
        claims(f"{API} {device_scope('dév')}"),
        claims(f"{API} {device_scope('X' * 256)}"),
        claims(API, device_id="has space"),
        claims(API, device_id='quo"te'),
    ],
)
def test_invalid_device_id(raw: dict[str, object]) -> None:
    with pytest.raises(UnknownToken, match="invalid device ID"):
        identify(raw)


def test_longest_device_id() -> None:
    assert identify(claims(API, device_id="X" * 255)).device_id == "X" * 255


def test_localpart_claim_is_configurable() -> None:
    raw = {"scope": f"{API} {device_scope('D')}", "preferred_username": "bob", "username": "x"}
    assert identify(raw, localpart_claim="preferred_username").user_id == "@bob:example.org"


@pytest.mark.parametrize("localpart", [None, "", "Alice", "al@ice", "al:ice", "al ice", 42])
def test_invalid_localpart(localpart: object) -> None:
    raw: dict[str, object] = {"scope": f"{API} {device_scope('D')}"}
    if localpart is not None:
        raw["preferred_username"] = localpart
    with pytest.raises(UnknownToken, match="localpart"):
        identify(raw, localpart_claim="preferred_username")


def test_user_id_length_limit() -> None:
    room = 255 - len("@:example.org")
    scope = f"{API} {device_scope('D')}"
    assert len(identify({"scope": scope, "username": "a" * room}).user_id) == 255
    with pytest.raises(UnknownToken, match="too long"):
        identify({"scope": scope, "username": "a" * (room + 1)})


def test_localpart_with_trailing_newline() -> None:
    with pytest.raises(UnknownToken):
        identify(claims(f"{API} {device_scope('D')}", username="alice\n"))


def test_device_id_with_trailing_newline() -> None:
    with pytest.raises(UnknownToken):
        identify(claims(API, device_id="DEVICE\n"))
