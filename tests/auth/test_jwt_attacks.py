"""Attacks on JWT access-token validation, end to end through the bridge.

Table-driven: each attack is one named test that sends one forged or broken
token to a bridge in ``issuer.validation: jwt`` mode and must get 401 (with
``soft_logout`` false, except for a token that merely expired) from the very
check the case names (its ``error`` message says which), while the
recording fake homeserver gets nothing at all, the issuer is never asked to
introspect, and no URL named in the token (``jku``, ``x5u``) is fetched.
Then the floods: one unknown ``kid`` 1,000 times at once, and 1,000 random
``kid``s at once, each reaching the issuer's JWKS at most once per cooldown.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from pytest_aiohttp import AiohttpClient, AiohttpServer

from bridge.app import create_app
from bridge.state import AUTHENTICATOR, SIGNING_KEYS
from tests.fakes import (
    BridgeClient,
    FakeHomeserver,
    FakeIssuer,
    SigningKey,
    active_claims,
    bearer,
    bridge_config,
    start_bridge,
)
from tests.support.clock import FakeClock

WHOAMI = "/_matrix/client/v3/account/whoami"
COOLDOWN = 10.0


@dataclass
class Attacker:
    """A server an attacker controls: counts every request (jku, x5u must never reach it)."""

    url: str = ""
    requests: int = 0


@pytest.fixture
async def attacker(aiohttp_server: AiohttpServer) -> Attacker:
    attacker = Attacker()

    async def anything(_request: web.Request) -> web.Response:
        attacker.requests += 1
        return web.json_response({"keys": []})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    server = await aiohttp_server(app)
    attacker.url = str(server.make_url("/"))
    return attacker


@pytest.fixture
async def issuer(aiohttp_server: AiohttpServer) -> FakeIssuer:
    return await FakeIssuer.start(aiohttp_server)


def jwt_config(**jwt: Any) -> dict[str, Any]:
    settings = {"jwks_refetch_cooldown": COOLDOWN, **jwt}
    return {"issuer": {"validation": "jwt", "introspection": None, "jwt": settings}}


@pytest.fixture
def clock() -> FakeClock:
    # The real time, standing still: the fake issuer dates its tokens by the real clock.
    return FakeClock(time.time())


@pytest.fixture
async def bridge(
    aiohttp_client: AiohttpClient, issuer: FakeIssuer, homeserver: FakeHomeserver, clock: FakeClock
) -> BridgeClient:
    config = bridge_config(issuer.url, homeserver.url, jwt_config())
    bridge = await aiohttp_client(create_app(config, clock=clock))
    assert issuer.jwks_requests == 1  # fetched at start
    return bridge


# ---------------------------------------------------------------------------------------
# Forging


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(document: Mapping[str, Any]) -> str:
    return b64(json.dumps(document).encode())


def hmac_signed(secret: bytes, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    """An HS256/HS512 token made by hand (PyJWT refuses to use a public key as a secret)."""
    digest = hashlib.sha512 if header["alg"] == "HS512" else hashlib.sha256
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    signature = hmac.new(secret, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64(signature)}"


def unsigned(header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    return f"{b64json(header)}.{b64json(claims)}."


def public_pem(issuer: FakeIssuer) -> bytes:
    key = issuer.key("RS256").private.public_key()
    return bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def stranger(alg: str = "RS256", kid: str = "rs-1") -> SigningKey:
    """A key of the attacker's, under any kid it likes."""
    return SigningKey.make(alg, kid, n=7)


def tampered(issuer: FakeIssuer) -> str:
    header, _payload, signature = issuer.sign().split(".")
    return f"{header}.{b64json(issuer.access_claims(username='admin'))}.{signature}"


def stripped(issuer: FakeIssuer) -> str:
    header, payload, _signature = issuer.sign().split(".")
    return f"{header}.{payload}."


def id_token(issuer: FakeIssuer, audience: str) -> str:
    """An ID token as the issuer signs one: typ JWT, a nonce, no scope."""
    claims = issuer.access_claims(audience=audience, scope=None, nonce="n-0S6_WzA2Mj")
    return issuer.sign(claims, typ="JWT")


def claims_with(issuer: FakeIssuer, **changes: Any) -> str:
    claims = issuer.access_claims()
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return issuer.sign(claims)


Forge = Callable[[FakeIssuer, Attacker], str]
NOW = int(time.time())
API = "urn:matrix:client:api:*"


@dataclass(frozen=True)
class Case:
    forge: Forge
    # The refusal's message (the Matrix error's ``error``): the check the case names
    # refused it, not another one on the way.
    reason: str
    errcode: str = "M_UNKNOWN_TOKEN"
    soft_logout: bool = False
    # Whether the JWKS may be fetched once more (a kid the bridge does not hold).
    refetch: bool = False


# The refusals shared by several cases.
ALG_REFUSED = "Token is signed with an algorithm this homeserver does not accept"
BAD_SIGNATURE = "Token's signature is invalid"
UNPUBLISHED_KEY = "Token is signed with a key the issuer does not publish"
NOT_AT_JWT = "Token is not a JWT access token (typ at+jwt)"
WRONG_ISSUER = "Token was issued by another issuer"
WRONG_AUDIENCE = "Token is not meant for this homeserver"
EXP_NOT_A_NUMBER = "Token's exp claim is not a number"
NOT_YET_VALID = "Token is not valid yet"
NO_API_SCOPE = "Token does not grant access to the Matrix client API"
BAD_DEVICE_ID = "Token names an invalid device ID"
BAD_LOCALPART = "Token does not carry a valid Matrix localpart"

ATTACKS: dict[str, Case] = {
    # -- algorithms --------------------------------------------------------------------
    "alg-none": Case(
        lambda i, a: unsigned({"alg": "none", "typ": "at+jwt", "kid": "rs-1"}, i.access_claims()),
        reason=ALG_REFUSED,
    ),
    "alg-None-capitalised": Case(
        lambda i, a: unsigned({"alg": "None", "typ": "at+jwt", "kid": "rs-1"}, i.access_claims()),
        reason=ALG_REFUSED,
    ),
    "alg-missing": Case(
        lambda i, a: unsigned({"typ": "at+jwt", "kid": "rs-1"}, i.access_claims()),
        reason=ALG_REFUSED,
    ),
    "hs256-with-the-issuers-public-key-pem": Case(
        lambda i, a: hmac_signed(
            public_pem(i), {"alg": "HS256", "typ": "at+jwt", "kid": "rs-1"}, i.access_claims()
        ),
        reason=ALG_REFUSED,
    ),
    "hs256-with-the-issuers-public-key-jwk": Case(
        lambda i, a: hmac_signed(
            json.dumps(i.key("RS256").jwk).encode(),
            {"alg": "HS256", "typ": "at+jwt", "kid": "rs-1"},
            i.access_claims(),
        ),
        reason=ALG_REFUSED,
    ),
    "hs512-with-the-issuers-public-key-pem": Case(
        lambda i, a: hmac_signed(
            public_pem(i), {"alg": "HS512", "typ": "at+jwt", "kid": "rs-1"}, i.access_claims()
        ),
        reason=ALG_REFUSED,
    ),
    "rs256-naming-the-issuers-ec-key": Case(
        lambda i, a: i.sign(key=i.key("RS256"), headers={"kid": "es-1"}),
        reason="Token's key does not fit its algorithm RS256",
    ),
    "es256-naming-the-issuers-rsa-key": Case(
        lambda i, a: i.sign(key=i.key("ES256"), headers={"kid": "rs-1"}),
        reason="Token's key does not fit its algorithm ES256",
    ),
    "es256-header-over-an-rs256-signature": Case(
        lambda i, a: (
            b64json({"alg": "ES256", "typ": "at+jwt", "kid": "es-1"})
            + "."
            + ".".join(i.sign().split(".")[1:])
        ),
        reason=BAD_SIGNATURE,
    ),
    # -- keys --------------------------------------------------------------------------
    "rs256-signed-by-a-stranger-under-the-issuers-kid": Case(
        lambda i, a: i.sign(key=stranger("RS256", "rs-1")), reason=BAD_SIGNATURE
    ),
    "es256-signed-by-a-stranger-under-the-issuers-kid": Case(
        lambda i, a: i.sign(key=stranger("ES256", "es-1")), reason=BAD_SIGNATURE
    ),
    "kid-not-in-the-jwks": Case(
        lambda i, a: i.sign(key=stranger("RS256", "rogue")),
        refetch=True,
        reason=UNPUBLISHED_KEY,
    ),
    "strangers-key-embedded-as-jwk-header": Case(
        lambda i, a: i.sign(key=(k := stranger("RS256", "embedded")), headers={"jwk": k.jwk}),
        refetch=True,
        reason=UNPUBLISHED_KEY,
    ),
    "jku-header-to-the-attacker": Case(
        lambda i, a: i.sign(key=stranger("RS256", "via-jku"), headers={"jku": a.url + "jwks"}),
        refetch=True,
        reason=UNPUBLISHED_KEY,
    ),
    "x5u-header-to-the-attacker": Case(
        lambda i, a: i.sign(key=stranger("RS256", "via-x5u"), headers={"x5u": a.url + "cert"}),
        refetch=True,
        reason=UNPUBLISHED_KEY,
    ),
    "crit-header-signed-by-the-issuer": Case(
        lambda i, a: i.sign(headers={"crit": ["exp"]}),
        reason="Token has critical header parameters this homeserver does not know",
    ),
    "signature-stripped": Case(lambda i, a: stripped(i), reason=BAD_SIGNATURE),
    "payload-tampered": Case(lambda i, a: tampered(i), reason=BAD_SIGNATURE),
    "not-a-jwt": Case(lambda i, a: "opaque-token-in-jwt-mode", reason="Token is not a JWT"),
    # -- type --------------------------------------------------------------------------
    "typ-missing": Case(lambda i, a: i.sign(typ=None), reason=NOT_AT_JWT),
    "typ-JWT": Case(lambda i, a: i.sign(typ="JWT"), reason=NOT_AT_JWT),
    "id-token": Case(lambda i, a: id_token(i, "element"), reason=WRONG_AUDIENCE),
    "id-token-for-our-audience": Case(
        lambda i, a: id_token(i, "https://matrix.example.test/"),
        reason=NOT_AT_JWT,
    ),
    "id-token-claims-under-typ-at+jwt": Case(
        lambda i, a: i.sign(i.access_claims(nonce="n-0S6_WzA2Mj")),
        reason="Token is an ID token, not an access token",
    ),
    # -- issuer and audience -----------------------------------------------------------
    "iss-another-issuer": Case(
        lambda i, a: claims_with(i, iss="https://evil.example/"),
        reason=WRONG_ISSUER,
    ),
    "iss-without-the-trailing-slash": Case(
        lambda i, a: claims_with(i, iss=i.url.rstrip("/")),
        reason=WRONG_ISSUER,
    ),
    "iss-with-a-second-trailing-slash": Case(
        lambda i, a: claims_with(i, iss=i.url + "/"), reason=WRONG_ISSUER
    ),
    "iss-missing": Case(lambda i, a: claims_with(i, iss=None), reason="Token has no iss claim"),
    "aud-missing": Case(lambda i, a: claims_with(i, aud=None), reason="Token has no aud claim"),
    "aud-wrong": Case(
        lambda i, a: claims_with(i, aud="https://other.example/"),
        reason=WRONG_AUDIENCE,
    ),
    "aud-list-without-ours": Case(
        lambda i, a: claims_with(i, aud=["a", "b"]), reason=WRONG_AUDIENCE
    ),
    # -- time --------------------------------------------------------------------------
    "exp-past-beyond-leeway": Case(
        lambda i, a: claims_with(i, exp=NOW - 120), soft_logout=True, reason="Token has expired"
    ),
    "exp-missing": Case(lambda i, a: claims_with(i, exp=None), reason="Token has no exp claim"),
    "exp-as-a-string": Case(
        lambda i, a: claims_with(i, exp=str(NOW + 3600)), reason=EXP_NOT_A_NUMBER
    ),
    "exp-as-true": Case(lambda i, a: claims_with(i, exp=True), reason=EXP_NOT_A_NUMBER),
    "exp-infinity": Case(lambda i, a: claims_with(i, exp=float("inf")), reason=EXP_NOT_A_NUMBER),
    "nbf-in-the-future": Case(lambda i, a: claims_with(i, nbf=NOW + 3600), reason=NOT_YET_VALID),
    "iat-in-the-future": Case(lambda i, a: claims_with(i, iat=NOW + 3600), reason=NOT_YET_VALID),
    # -- identity ----------------------------------------------------------------------
    "no-api-scope": Case(
        lambda i, a: claims_with(i, scope="openid urn:matrix:client:device:D"),
        reason=NO_API_SCOPE,
    ),
    "api-scope-as-a-list-in-scope": Case(
        lambda i, a: claims_with(i, scope=[API]),
        reason=NO_API_SCOPE,
    ),
    "two-device-scopes": Case(
        lambda i, a: claims_with(
            i, scope=f"{API} urn:matrix:client:device:ONE urn:matrix:client:device:TWO"
        ),
        reason="Token must not name more than one device in its scope",
    ),
    "device-id-with-characters-outside-the-set": Case(
        lambda i, a: claims_with(i, scope=f"{API} urn:matrix:client:device:dev%20ice"),
        reason=BAD_DEVICE_ID,
    ),
    "device-id-claim-with-a-quote": Case(
        lambda i, a: claims_with(i, device_id='dev"ice'), reason=BAD_DEVICE_ID
    ),
    "device-id-over-255-characters": Case(
        lambda i, a: claims_with(i, scope=f"{API} urn:matrix:client:device:{'D' * 256}"),
        reason=BAD_DEVICE_ID,
    ),
    "localpart-upper-case": Case(
        lambda i, a: claims_with(i, username="Alice"),
        reason=BAD_LOCALPART,
    ),
    "localpart-with-a-colon": Case(
        lambda i, a: claims_with(i, username="al:ice"),
        reason=BAD_LOCALPART,
    ),
    "localpart-missing": Case(
        lambda i, a: claims_with(i, username=None),
        reason=BAD_LOCALPART,
    ),
    # -- transport ---------------------------------------------------------------------
    "token-of-64-KiB": Case(lambda i, a: "eyJ" + "A" * (64 * 1024), reason="Invalid access token"),
    "bearer-with-nothing-after-it": Case(
        lambda i, a: "", errcode="M_MISSING_TOKEN", reason="Invalid Authorization header"
    ),
}


@pytest.mark.parametrize("name", list(ATTACKS))
async def test_attack_is_401_and_reaches_no_homeserver(
    name: str,
    bridge: BridgeClient,
    issuer: FakeIssuer,
    homeserver: FakeHomeserver,
    attacker: Attacker,
) -> None:
    case = ATTACKS[name]
    token = case.forge(issuer, attacker)
    resp = await bridge.get(WHOAMI, headers={"Authorization": f"Bearer {token}".rstrip()})
    assert resp.status == 401
    body = await resp.json()
    assert body["errcode"] == case.errcode
    assert body["error"] == case.reason
    if case.errcode == "M_UNKNOWN_TOKEN":
        assert body["soft_logout"] is case.soft_logout
    assert homeserver.requests == []
    assert issuer.introspections == []
    assert attacker.requests == 0
    assert issuer.jwks_requests == (2 if case.refetch else 1)


async def test_the_valid_token_the_attacks_start_from_is_accepted(
    bridge: BridgeClient, issuer: FakeIssuer, homeserver: FakeHomeserver
) -> None:
    """The control: without the forgery, the same kind of token works."""
    for alg in ("RS256", "ES256"):
        resp = await bridge.get(WHOAMI, headers=bearer(issuer.sign(alg=alg)))
        assert resp.status == 200
    (forwarded,) = {(r.query["user_id"], r.query["device_id"]) for r in homeserver.client_requests}
    assert forwarded == ("@alice:example.test", "DEVA")
    assert issuer.introspections == []


async def test_lower_case_bearer_is_accepted(bridge: BridgeClient, issuer: FakeIssuer) -> None:
    """RFC 6750 §2.1 with RFC 7235 §2.1: the scheme is case-insensitive."""
    for scheme in ("bearer", "BEARER", "bEaReR"):
        resp = await bridge.get(WHOAMI, headers={"Authorization": f"{scheme} {issuer.sign()}"})
        assert resp.status == 200


async def test_a_forged_jwt_is_never_introspected_in_jwt_then_introspection_mode(
    aiohttp_client: AiohttpClient, issuer: FakeIssuer, homeserver: FakeHomeserver
) -> None:
    config = bridge_config(
        issuer.url,
        homeserver.url,
        {"issuer": {"validation": "jwt_then_introspection"}},
    )
    bridge = await start_bridge(aiohttp_client, config)
    forged = unsigned({"alg": "none", "typ": "at+jwt"}, issuer.access_claims())
    assert (await bridge.get(WHOAMI, headers=bearer(forged))).status == 401
    assert issuer.introspections == []
    # An opaque token is introspected; a valid JWT is not.
    assert (await bridge.get(WHOAMI, headers=bearer("opaque"))).status == 401
    assert len(issuer.introspections) == 1
    assert (await bridge.get(WHOAMI, headers=bearer(issuer.sign()))).status == 200
    assert len(issuer.introspections) == 1
    assert homeserver.client_requests


# ---------------------------------------------------------------------------------------
# Floods of unknown kids


async def test_one_unknown_kid_sent_1000_times_at_once_is_fetched_for_once(
    bridge: BridgeClient, issuer: FakeIssuer, homeserver: FakeHomeserver
) -> None:
    issuer.jwks_delay = 0.05
    token = issuer.sign(key=stranger("RS256", "rogue"))
    responses = await asyncio.gather(
        *(bridge.get(WHOAMI, headers=bearer(token)) for _ in range(1000))
    )
    assert {r.status for r in responses} == {401}
    assert issuer.jwks_requests == 2  # the one at start, and one refetch
    assert homeserver.requests == []


async def test_1000_distinct_tokens_with_one_unknown_kid_share_one_fetch(
    bridge: BridgeClient, issuer: FakeIssuer, homeserver: FakeHomeserver
) -> None:
    issuer.jwks_delay = 0.05
    key = stranger("ES256", "rogue")
    tokens = [issuer.sign(issuer.access_claims(jti=str(n)), key=key) for n in range(1000)]
    responses = await asyncio.gather(*(bridge.get(WHOAMI, headers=bearer(t)) for t in tokens))
    assert {r.status for r in responses} == {401}
    assert issuer.jwks_requests == 2
    assert homeserver.requests == []


async def test_1000_random_kids_reach_the_issuer_at_most_once_per_cooldown(
    bridge: BridgeClient, issuer: FakeIssuer, homeserver: FakeHomeserver, clock: FakeClock
) -> None:
    issuer.jwks_delay = 0.05
    base = stranger("ES256")
    for round_ in (1, 2):
        tokens = [issuer.sign(key=base, headers={"kid": secrets.token_hex(8)}) for _ in range(1000)]
        responses = await asyncio.gather(*(bridge.get(WHOAMI, headers=bearer(t)) for t in tokens))
        statuses = {r.status for r in responses}
        # 401 for those that waited on the refetch, 503 (never 200) during the cooldown.
        assert statuses <= {401, 503}
        assert issuer.jwks_requests <= 1 + round_
        for resp in responses:
            if resp.status == 503:
                assert int(resp.headers["Retry-After"]) >= 1
        clock.advance(COOLDOWN * 1.1)
    assert homeserver.requests == []
    # A token of the issuer's own stays good throughout.
    assert (await bridge.get(WHOAMI, headers=bearer(issuer.sign()))).status == 200


async def test_a_session_cached_under_a_key_no_longer_published_is_refused_at_once(
    bridge: BridgeClient, issuer: FakeIssuer, homeserver: FakeHomeserver
) -> None:
    """A retired (maybe compromised) key stops working when the JWKS refresh finds it
    gone, not when the cache entries it verified expire; the others' stay cached."""
    retired, kept = issuer.sign(), issuer.sign(alg="ES256")
    for token in (retired, kept):
        assert (await bridge.get(WHOAMI, headers=bearer(token))).status == 200
    issuer.rotate("RS256")
    issuer.keys = [k for k in issuer.keys if k.kid != "rs-1"]
    await bridge.app[SIGNING_KEYS].fetch()  # as the background refresh does
    forwarded = len(homeserver.requests)
    resp = await bridge.get(WHOAMI, headers=bearer(retired))
    assert resp.status == 401
    assert (await resp.json())["error"] == UNPUBLISHED_KEY
    assert len(homeserver.requests) == forwarded
    assert (await bridge.get(WHOAMI, headers=bearer(issuer.sign()))).status == 200
    assert len(bridge.app[AUTHENTICATOR]) == 2  # the ES256 session, and the new one
    assert (await bridge.get(WHOAMI, headers=bearer(kept))).status == 200


async def test_other_key_material_under_a_published_kid_ends_the_old_keys_sessions(
    bridge: BridgeClient, issuer: FakeIssuer
) -> None:
    """A compromised key replaced under the same kid is as gone as an unpublished one."""
    old = issuer.sign()
    assert (await bridge.get(WHOAMI, headers=bearer(old))).status == 200
    issuer.keys = [
        SigningKey.make("RS256", "rs-1", n=3) if k.kid == "rs-1" else k for k in issuer.keys
    ]
    await bridge.app[SIGNING_KEYS].fetch()
    resp = await bridge.get(WHOAMI, headers=bearer(old))
    assert resp.status == 401
    assert (await resp.json())["error"] == BAD_SIGNATURE
    assert (await bridge.get(WHOAMI, headers=bearer(issuer.sign()))).status == 200


async def test_a_retired_key_leaves_introspected_sessions_cached(
    aiohttp_client: AiohttpClient, issuer: FakeIssuer, homeserver: FakeHomeserver
) -> None:
    """jwt_then_introspection: what the issuer vouched for by introspection does not
    depend on its keys, and is not asked about again when one is retired."""
    config = bridge_config(
        issuer.url, homeserver.url, {"issuer": {"validation": "jwt_then_introspection"}}
    )
    bridge = await start_bridge(aiohttp_client, config)
    issuer.tokens["opaque"] = active_claims("bob", "DEVB")
    retired = issuer.sign()
    for token in ("opaque", retired):
        assert (await bridge.get(WHOAMI, headers=bearer(token))).status == 200
    issuer.keys = [k for k in issuer.keys if k.kid != "rs-1"]
    await bridge.app[SIGNING_KEYS].fetch()
    assert (await bridge.get(WHOAMI, headers=bearer(retired))).status == 401
    assert (await bridge.get(WHOAMI, headers=bearer("opaque"))).status == 200
    assert len(issuer.introspections) == 1
