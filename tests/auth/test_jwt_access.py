"""JwtVerifier: what a valid RFC 9068 access token is, and the verdicts on near misses.

The attacks themselves, end to end through the bridge, are in test_jwt_attacks.py.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from bridge.auth.jwt_access import JwtVerifier, unverified_header
from bridge.auth.verifier import ClaimRules, JwtThenIntrospection, Verdict, looks_like_jwt
from bridge.errors import IssuerUnavailable
from bridge.issuer.http import IssuerHTTP
from bridge.issuer.jwks import SigningKeys
from bridge.issuer.limit import InflightLimit
from bridge.issuer.metadata import IssuerMetadata
from bridge.ops.metrics import Metrics
from bridge.runtime.clock import SYSTEM_CLOCK
from tests.fakes import PUBLIC_BASEURL, FakeIssuer, SigningKey, bridge_config

MakeVerifier = Callable[..., Awaitable[JwtVerifier]]


@pytest.fixture
async def issuer(aiohttp_server: AiohttpServer) -> FakeIssuer:
    issuer = await FakeIssuer.start(aiohttp_server)
    issuer.keys += [
        SigningKey.make("PS256", "ps-1", 1, publish_alg=True),
        SigningKey.make("EdDSA", "ed-1"),
        SigningKey.make("ES384", "es384-1"),
    ]
    return issuer


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def make_verifier(issuer: FakeIssuer, session: aiohttp.ClientSession) -> MakeVerifier:
    async def make(**issuer_settings: Any) -> JwtVerifier:
        overrides = {"issuer": {"validation": "jwt", **issuer_settings}}
        config = bridge_config(issuer.url, "http://127.0.0.1:9", overrides)
        http = IssuerHTTP(session, InflightLimit(8), Metrics(), SYSTEM_CLOCK, config.issuer.timeout)
        metadata = IssuerMetadata(http, config.issuer)
        await metadata.fetch()
        keys = SigningKeys(http, metadata, config.issuer, max_unknown=100)
        await keys.fetch()
        return JwtVerifier(keys, metadata, config, ClaimRules.from_config(config))

    return make


@pytest.fixture
async def verifier(make_verifier: MakeVerifier) -> JwtVerifier:
    return await make_verifier()


def accepted(verdict: Verdict) -> None:
    assert verdict.identity is not None, verdict.reason
    assert verdict.identity.user_id == "@alice:example.test"


def refused(verdict: Verdict, reason: str) -> None:
    assert verdict.identity is None
    assert reason in verdict.reason
    assert not verdict.soft_logout or reason == "expired"


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256", "EdDSA"])
async def test_default_algorithms_are_accepted(
    verifier: JwtVerifier, issuer: FakeIssuer, alg: str
) -> None:
    verdict = await verifier.verify(issuer.sign(alg=alg))
    accepted(verdict)
    assert verdict.identity is not None
    assert verdict.identity.device_id == "DEVA"


async def test_an_algorithm_outside_the_allow_list_is_refused(
    verifier: JwtVerifier, issuer: FakeIssuer, make_verifier: MakeVerifier
) -> None:
    token = issuer.sign(alg="ES384")
    refused(await verifier.verify(token), "algorithm")
    allowing = await make_verifier(jwt={"algorithms": ["ES384"]})
    accepted(await allowing.verify(token))
    refused(await allowing.verify(issuer.sign(alg="RS256")), "algorithm")


async def test_expiry_is_carried_for_the_cache(verifier: JwtVerifier, issuer: FakeIssuer) -> None:
    claims = issuer.access_claims()
    verdict = await verifier.verify(issuer.sign(claims))
    assert verdict.expires_at == float(claims["exp"])


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT", "Application/At+JWT"])
async def test_access_token_types(verifier: JwtVerifier, issuer: FakeIssuer, typ: str) -> None:
    accepted(await verifier.verify(issuer.sign(typ=typ)))


@pytest.mark.parametrize("typ", [None, "JWT", "jwt", "at+jwt+x", "id_token"])
async def test_other_types_are_refused(verifier: JwtVerifier, issuer: FakeIssuer, typ: str) -> None:
    refused(await verifier.verify(issuer.sign(typ=typ)), "typ at+jwt")


async def test_typ_may_be_relaxed_but_id_tokens_stay_refused(
    make_verifier: MakeVerifier, issuer: FakeIssuer
) -> None:
    relaxed = await make_verifier(jwt={"require_typ": False})
    accepted(await relaxed.verify(issuer.sign(typ="JWT")))
    accepted(await relaxed.verify(issuer.sign(typ=None)))
    for marker in ({"nonce": "n"}, {"at_hash": "h"}, {"c_hash": "h"}, {"typ": "ID"}):
        claims = issuer.access_claims(**marker)
        refused(await relaxed.verify(issuer.sign(claims, typ="JWT")), "ID token")


async def test_leeway_is_honoured(verifier: JwtVerifier, issuer: FakeIssuer) -> None:
    now = int(time.time())
    for claims in (
        issuer.access_claims(exp=now - 20),
        issuer.access_claims(nbf=now + 20),
        issuer.access_claims(iat=now + 20),
    ):
        accepted(await verifier.verify(issuer.sign(claims)))
    refused(await verifier.verify(issuer.sign(issuer.access_claims(exp=now - 40))), "expired")
    refused(await verifier.verify(issuer.sign(issuer.access_claims(nbf=now + 40))), "not valid yet")
    refused(await verifier.verify(issuer.sign(issuer.access_claims(iat=now + 40))), "not valid yet")


async def test_leeway_is_configurable(make_verifier: MakeVerifier, issuer: FakeIssuer) -> None:
    strict = await make_verifier(leeway=0)
    claims = issuer.access_claims(exp=int(time.time()) - 2)
    verdict = await strict.verify(issuer.sign(claims))
    refused(verdict, "expired")
    assert verdict.soft_logout is True


async def test_scp_list_grants_scopes(verifier: JwtVerifier, issuer: FakeIssuer) -> None:
    claims = issuer.access_claims(scope=None)
    claims["scp"] = ["openid", "urn:matrix:client:api:*", "urn:matrix:client:device:SCPDEV"]
    verdict = await verifier.verify(issuer.sign(claims))
    accepted(verdict)
    assert verdict.identity is not None
    assert verdict.identity.device_id == "SCPDEV"


async def test_device_less_token_is_accepted(verifier: JwtVerifier, issuer: FakeIssuer) -> None:
    verdict = await verifier.verify(issuer.sign(issuer.access_claims(device_id=None)))
    accepted(verdict)
    assert verdict.identity is not None
    assert verdict.identity.device_id is None


async def test_audience_defaults_to_the_public_base_url(
    verifier: JwtVerifier, issuer: FakeIssuer, make_verifier: MakeVerifier
) -> None:
    accepted(await verifier.verify(issuer.sign(issuer.access_claims(audience=PUBLIC_BASEURL))))
    listed = issuer.access_claims(audience=["other", PUBLIC_BASEURL])
    accepted(await verifier.verify(issuer.sign(listed)))
    configured = await make_verifier(audiences=["urn:matrix:client", "other"])
    accepted(await configured.verify(issuer.sign(issuer.access_claims(audience="other"))))
    refused(await configured.verify(issuer.sign()), "not meant for this homeserver")


async def test_client_id_allow_list_applies(
    make_verifier: MakeVerifier, issuer: FakeIssuer
) -> None:
    verifier = await make_verifier(client_ids=["element"])
    accepted(await verifier.verify(issuer.sign()))
    other = issuer.access_claims(client_id="bot")
    refused(await verifier.verify(issuer.sign(other)), "client")


async def test_reserved_users_are_forbidden(verifier: JwtVerifier, issuer: FakeIssuer) -> None:
    verdict = await verifier.verify(issuer.sign(issuer.access_claims(username="oidc-bridge")))
    assert verdict.identity is None
    assert verdict.forbidden


async def test_foreign_headers_are_not_read(verifier: JwtVerifier, issuer: FakeIssuer) -> None:
    """jku, x5u, x5c and jwk never choose the key; the issuer's own signature still holds."""
    headers = {
        "jku": "http://127.0.0.1:9/keys",
        "x5u": "http://127.0.0.1:9/cert",
        "x5c": ["bm90IGEgY2VydA=="],
        "jwk": {"kty": "oct", "k": "c2VjcmV0"},
    }
    accepted(await verifier.verify(issuer.sign(headers=headers)))


async def test_no_verification_while_the_discovery_document_is_not_trusted(
    verifier: JwtVerifier, issuer: FakeIssuer
) -> None:
    token = issuer.sign()
    issuer.discovery_issuer = issuer.url.rstrip("/")
    with pytest.raises(IssuerUnavailable):
        await verifier._metadata.fetch()
    with pytest.raises(IssuerUnavailable):
        await verifier.verify(token)


def test_unverified_header() -> None:
    assert unverified_header("eyJhbGciOiJSUzI1NiJ9.e30.c2ln") == {"alg": "RS256"}
    assert unverified_header("not-a-jwt") is None
    assert unverified_header("WzFd.e30.c2ln") is None  # [1]: not an object
    assert unverified_header("e30") == {}


@pytest.mark.parametrize(
    ("token", "jwt"),
    [
        ("eyJhbGciOiJSUzI1NiJ9.e30.c2ln", True),
        ("eyAiYWxnIjogIlJTMjU2In0.e30.c2ln", True),
        ("mat_abcdefghijklmnop", False),
        ("eyJhbGciOiJSUzI1NiJ9.e30", False),
        ("abc.def.ghi", False),
    ],
)
def test_looks_like_jwt(token: str, jwt: bool) -> None:
    assert looks_like_jwt(token) is jwt


async def test_jwt_then_introspection_routes_by_shape() -> None:
    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name
            self.tokens: list[str] = []

        async def verify(self, token: str) -> Verdict:
            self.tokens.append(token)
            return Verdict(None, self.name)

    jwt_side, introspection = Recorder("jwt"), Recorder("introspection")
    both = JwtThenIntrospection(jwt_side, introspection)
    assert (await both.verify("eyJhbGciOiJub25lIn0.e30.")).reason == "jwt"
    assert (await both.verify("opaque")).reason == "introspection"
    assert jwt_side.tokens == ["eyJhbGciOiJub25lIn0.e30."]
    assert introspection.tokens == ["opaque"]
