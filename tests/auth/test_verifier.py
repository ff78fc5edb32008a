"""IntrospectionVerifier: an RFC 7662 answer → a verdict."""

from __future__ import annotations

import json
import re
import time
from typing import Any, cast

import pytest

from bridge.auth.identity import device_scope
from bridge.auth.verifier import LEEWAY, ClaimRules, IntrospectionVerifier, Verdict
from bridge.errors import Forbidden, IssuerUnavailable, UnknownToken
from bridge.issuer.introspection import Introspector

SCOPE = f"openid urn:matrix:client:api:* {device_scope('ABCDEF')}"


class FakeIntrospector:
    """Answers every introspection with ``answer`` (or raises ``error``)."""

    def __init__(self, answer: dict[str, Any], error: Exception | None = None) -> None:
        self.answer = answer
        self.error = error
        self.tokens: list[str] = []

    async def introspect(self, token: str) -> dict[str, Any]:
        self.tokens.append(token)
        if self.error is not None:
            raise self.error
        return self.answer


def active(**changes: Any) -> dict[str, Any]:
    claims = {"active": True, "token_type": "access_token", "scope": SCOPE, "username": "alice"}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


RULES = ClaimRules(
    server_name="example.org",
    issuer="https://issuer.example.org/",
    reserved_localparts=frozenset({"oidc-bridge"}),
)


def make_verifier(fake: FakeIntrospector, rules: ClaimRules = RULES) -> IntrospectionVerifier:
    return IntrospectionVerifier(cast(Introspector, fake), rules)


async def verify(answer: dict[str, Any], rules: ClaimRules = RULES) -> Verdict:
    return await make_verifier(FakeIntrospector(answer), rules).verify("opaque-token")


@pytest.mark.parametrize("token_type", ["Bearer", "bearer", "access_token"])
async def test_access_token_is_accepted(token_type: str) -> None:
    verdict = await verify(active(token_type=token_type))
    assert verdict.identity is not None
    assert verdict.identity.user_id == "@alice:example.org"
    assert verdict.identity.device_id == "ABCDEF"
    assert verdict.identity_or_raise() is verdict.identity


async def test_token_is_sent_to_the_introspector() -> None:
    fake = FakeIntrospector(active())
    await make_verifier(fake).verify("opaque-token")
    assert fake.tokens == ["opaque-token"]


@pytest.mark.parametrize("answer", [{"active": False}, active(active=False), active(active="true")])
async def test_inactive(answer: dict[str, Any]) -> None:
    verdict = await verify(answer)
    assert verdict.identity is None
    assert "not active" in verdict.reason
    with pytest.raises(UnknownToken):
        verdict.identity_or_raise()


@pytest.mark.parametrize("token_type", [None, "refresh_token", "", 1])
async def test_not_an_access_token(token_type: object) -> None:
    verdict = await verify(active(token_type=token_type))
    assert verdict.identity is None
    assert "not an access token" in verdict.reason


async def test_expired_beyond_leeway() -> None:
    verdict = await verify(active(exp=int(time.time()) - LEEWAY - 30))
    assert verdict.identity is None
    assert "expired" in verdict.reason
    assert verdict.soft_logout is True
    with pytest.raises(UnknownToken) as info:
        verdict.identity_or_raise()
    assert info.value.soft_logout is True
    assert json.loads(info.value.to_response().text or "")["soft_logout"] is True


async def test_inactive_is_not_a_soft_logout() -> None:
    verdict = await verify({"active": False})
    with pytest.raises(UnknownToken) as info:
        verdict.identity_or_raise()
    assert info.value.soft_logout is False
    body = json.loads(info.value.to_response().text or "")
    assert body == {
        "errcode": "M_UNKNOWN_TOKEN",
        "error": "Token is not active",
        "soft_logout": False,
    }


async def test_leeway_is_configurable() -> None:
    rules = ClaimRules(server_name="example.org", leeway=0)
    verdict = await verify(active(exp=int(time.time()) - 2), rules)
    assert verdict.identity is None
    assert verdict.soft_logout is True


async def test_expired_within_leeway_is_accepted() -> None:
    verdict = await verify(active(exp=int(time.time()) - LEEWAY + 20))
    assert verdict.identity is not None


async def test_not_yet_valid() -> None:
    verdict = await verify(active(nbf=int(time.time()) + LEEWAY + 60))
    assert verdict.identity is None
    assert "not valid yet" in verdict.reason


async def test_nbf_within_leeway_is_accepted() -> None:
    verdict = await verify(active(nbf=int(time.time()) + LEEWAY - 20))
    assert verdict.identity is not None


async def test_expires_at_is_carried() -> None:
    exp = int(time.time()) + 600
    verdict = await verify(active(exp=exp))
    assert verdict.identity is not None
    assert verdict.expires_at == float(exp)


async def test_no_exp_means_no_expiry() -> None:
    assert (await verify(active())).expires_at is None


async def test_unusable_claims_give_no_identity() -> None:
    exp = int(time.time()) + 600
    verdict = await verify(active(scope="openid", exp=exp))
    assert verdict.identity is None
    assert "client API" in verdict.reason
    assert verdict.expires_at == float(exp)


async def test_issuer_failure_propagates() -> None:
    fake = FakeIntrospector({}, error=IssuerUnavailable("issuer down"))
    with pytest.raises(IssuerUnavailable):
        await make_verifier(fake).verify("opaque-token")


@pytest.mark.parametrize(
    "iss", ["https://issuer.example.org", "https://issuer.example.org//", "https://evil.example/"]
)
async def test_another_issuer_is_refused(iss: str) -> None:
    verdict = await verify(active(iss=iss))
    assert verdict.identity is None
    assert "another issuer" in verdict.reason


async def test_the_configured_issuer_is_accepted() -> None:
    assert (await verify(active(iss="https://issuer.example.org/"))).identity is not None


AUDIENCE_RULES = ClaimRules(
    server_name="example.org",
    audiences=frozenset({"https://matrix.example.org/"}),
    client_ids=frozenset({"element-x"}),
)


@pytest.mark.parametrize(
    ("aud", "client_id", "accepted"),
    [
        ("https://matrix.example.org/", "element-x", True),
        (["other", "https://matrix.example.org/"], "element-x", True),
        (None, "element-x", False),
        ("https://other.example/", "element-x", False),
        (["other"], "element-x", False),
        ("https://matrix.example.org/", "another-client", False),
        ("https://matrix.example.org/", None, False),
    ],
)
async def test_audience_and_client_allow_lists(
    aud: object, client_id: object, accepted: bool
) -> None:
    verdict = await verify(active(aud=aud, client_id=client_id), AUDIENCE_RULES)
    assert (verdict.identity is not None) is accepted


async def test_allow_lists_are_not_checked_when_empty() -> None:
    assert (await verify(active(aud="anything", client_id="any"))).identity is not None


async def test_the_appservice_sender_is_forbidden() -> None:
    verdict = await verify(active(username="oidc-bridge"))
    assert verdict.identity is None
    with pytest.raises(Forbidden):
        verdict.identity_or_raise()


async def test_reserved_users_and_other_appservices_users_are_forbidden() -> None:
    rules = ClaimRules(
        server_name="example.org",
        reserved_localparts=frozenset({"oidc-bridge", "notices"}),
        exclusive_users=(re.compile(r"@telegram_.*:example\.org"),),
    )
    for localpart in ("notices", "telegram_123"):
        verdict = await verify(active(username=localpart), rules)
        assert verdict.identity is None
        assert verdict.forbidden
    assert (await verify(active(username="telegramfan"), rules)).identity is not None
