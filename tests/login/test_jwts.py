"""ID tokens and logout tokens, checked with PyJWT and pinned algorithms."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.login.jwts import (
    BACKCHANNEL_LOGOUT_EVENT,
    LOGOUT_TOKEN_MAX_AGE,
    JwtChecks,
    JwtRefused,
)

ISSUER = "https://issuer.example.test/"
CLIENT = "bridge-client"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC = {
    **json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key())),
    "kid": "k1",
    "alg": "RS256",
}


class Keys:
    async def key(self, kid: str | None, alg: str) -> jwt.PyJWK | str:
        return jwt.PyJWK(PUBLIC, alg) if kid == "k1" else "unknown kid"


def checks() -> JwtChecks:
    return JwtChecks(issuer=ISSUER, client_id=CLIENT, algorithms=("RS256",), keys=Keys(), leeway=30)


def sign(claims: dict[str, Any], *, kid: str = "k1", **header: Any) -> str:
    return jwt.encode(claims, KEY, algorithm="RS256", headers={"kid": kid, **header})


def id_claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": CLIENT, "iat": now, "exp": now + 60, "sub": "s1"}
    claims |= {"nonce": "n1", "sid": "sid1"}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


async def test_a_good_id_token() -> None:
    claims = await checks().id_token(sign(id_claims()), nonce="n1")
    assert (claims.sub, claims.sid) == ("s1", "sid1")


@pytest.mark.parametrize(
    ("changes", "nonce"),
    [
        ({"nonce": "other"}, "n1"),
        ({"nonce": None}, "n1"),
        ({}, None),  # a nonce where none was sent
        ({"aud": "someone-else"}, "n1"),
        ({"aud": [CLIENT, "other"]}, "n1"),  # several audiences and no azp
        ({"iss": "https://evil.test/"}, "n1"),
        ({"exp": int(time.time()) - 3600}, "n1"),
        ({"sub": None}, "n1"),
        ({"iat": None}, "n1"),
    ],
)
async def test_bad_id_tokens(changes: dict[str, Any], nonce: str | None) -> None:
    with pytest.raises(JwtRefused):
        await checks().id_token(sign(id_claims(**changes)), nonce=nonce)


async def test_an_id_token_with_azp_and_several_audiences() -> None:
    token = sign(id_claims(aud=[CLIENT, "other"], azp=CLIENT))
    assert (await checks().id_token(token, nonce="n1")).sub == "s1"


async def test_an_id_token_signed_otherwise_is_refused() -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(id_claims(), other, algorithm="RS256", headers={"kid": "k1"})
    with pytest.raises(JwtRefused):
        await checks().id_token(token, nonce="n1")


async def test_alg_none_is_refused() -> None:
    token = jwt.encode(id_claims(), None, algorithm="none")
    with pytest.raises(JwtRefused, match="algorithm"):
        await checks().id_token(token, nonce="n1")


def logout_claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": CLIENT,
        "iat": now,
        "exp": now + 120,
        "jti": "j1",
        "sid": "sid1",
        "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


async def test_a_good_logout_token() -> None:
    claims = await checks().logout_token(sign(logout_claims(), typ="logout+jwt"), now=time.time())
    assert (claims.sid, claims.sub, claims.jti) == ("sid1", None, "j1")
    assert claims.remember_until > time.time() + 120


@pytest.mark.parametrize(
    "changes",
    [
        {"events": None},
        {"events": {BACKCHANNEL_LOGOUT_EVENT: "yes"}},
        {"nonce": "n"},
        {"jti": None},
        {"sid": None},  # and no sub either
        {"aud": "other"},
        {"iat": int(time.time()) - 3600, "exp": None},
        {"iat": None},
    ],
)
async def test_bad_logout_tokens(changes: dict[str, Any]) -> None:
    with pytest.raises(JwtRefused):
        await checks().logout_token(sign(logout_claims(**changes)), now=time.time())


async def test_a_logout_token_is_refused_once_older_than_its_max_age_when_received() -> None:
    claims = logout_claims(exp=None)
    token = sign(claims)
    oldest = claims["iat"] + LOGOUT_TOKEN_MAX_AGE
    assert (await checks().logout_token(token, now=oldest)).jti == "j1"
    with pytest.raises(JwtRefused, match="issued too long ago"):
        await checks().logout_token(token, now=oldest + 1)


async def test_a_logout_token_typed_as_something_else_is_refused() -> None:
    with pytest.raises(JwtRefused, match="typ"):
        await checks().logout_token(sign(logout_claims(), typ="at+jwt"), now=time.time())
