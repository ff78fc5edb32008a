"""OpenID Connect Back-Channel Logout from the real oidc-provider, and logout tokens that
must change nothing.

- A person logs in through the bridge (SSO), then logs out at the issuer
  (its end-session endpoint, "yes, sign me out"); oidc-provider sends its
  signed logout token to the bridge's ``backchannel_logout_uri``: the
  session's token is refused on the very next request (it was cached), its
  refresh token too, and its homeserver device is gone.
- Forged (unknown key, or the right ``kid`` with another key, or ``alg``
  none/HS256), replayed, wrong-audience, wrong-issuer, ``nonce``-carrying,
  event-less and stale logout tokens are refused with 400, and the session
  keeps working.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import bridge.app
from tests.integration.conftest import auth, new_localpart
from tests.integration.login_stack import V3, LoginStack, MakeLoginBridge
from tests.support.issuer import TestIssuer
from tests.support.sso import BACKCHANNEL, HttpBrowser

WHOAMI = f"{V3}/account/whoami"
EVENT = {"http://schemas.openid.net/event/backchannel-logout": {}}


class StaticKeys:
    """Signing keys by kid, given up front."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self._keys = {k.get("kid"): k for k in jwks["keys"]}

    async def key(self, kid: str | None, alg: str) -> jwt.PyJWK | str:
        found = self._keys.get(kid)
        if found is None:
            return "unknown kid"
        return jwt.PyJWK(found, alg)


@pytest.fixture(scope="module")
def test_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


@pytest.fixture
def trusted_keys(
    monkeypatch: pytest.MonkeyPatch, issuer: TestIssuer, test_key: rsa.RSAPrivateKey
) -> None:
    """The bridge's keys: the real issuer's JWKS (read once here) and the test's own key,
    which signs the made-up logout tokens below. (The real logout above goes through
    the bridge's own JWKS cache.)"""
    import urllib.request

    with urllib.request.urlopen(issuer.url + ".well-known/openid-configuration") as resp:
        jwks_uri = json.load(resp)["jwks_uri"]
    with urllib.request.urlopen(jwks_uri) as resp:
        jwks = json.load(resp)
    jwks["keys"].append(_public_jwk(test_key, "test-key"))
    monkeypatch.setattr(bridge.app, "signing_keys", lambda _app: StaticKeys(jwks))


async def _whoami(stack: LoginStack, token: str) -> int:
    resp = await stack.bridge.get(WHOAMI, headers=auth(token))
    return resp.status


async def _post_logout_token(stack: LoginStack, token: str) -> tuple[int, dict[str, Any]]:
    resp = await stack.bridge.post(
        f"/{BACKCHANNEL}",
        data=f"logout_token={token}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.headers["Cache-Control"] == "no-store"
    return resp.status, await resp.json()


async def test_issuer_logout_ends_the_session_at_once(
    make_login_bridge: MakeLoginBridge,
    http: aiohttp.ClientSession,
    issuer: TestIssuer,
) -> None:
    stack = await make_login_bridge("synapse", "device_login")
    person = HttpBrowser()
    try:
        answer = await stack.sso_session(person, new_localpart("judy"))
        token, user_id, device_id = answer["access_token"], answer["user_id"], answer["device_id"]
        assert await _whoami(stack, token) == 200  # cached now
        assert device_id in await stack.devices(http, user_id)

        ended = await person.end_issuer_session(issuer)
        assert ended.status == 303, ended.text[:300]
    finally:
        await person.close()

    assert "backchannel.error" not in issuer.log_path.read_text(errors="replace")
    assert await _whoami(stack, token) == 401
    assert device_id not in await stack.devices(http, user_id)
    resp = await stack.bridge.post(f"{V3}/refresh", json={"refresh_token": answer["refresh_token"]})
    assert resp.status == 401


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.fixture
async def session(
    trusted_keys: None, make_login_bridge: MakeLoginBridge, http: aiohttp.ClientSession
) -> tuple[LoginStack, str, str, str]:
    """A bridge and one SSO session on it: (stack, access token, username at the issuer,
    device)."""
    stack = await make_login_bridge("synapse", "device_login")
    username = new_localpart("kim")
    person = HttpBrowser()
    try:
        answer = await stack.sso_session(person, username)
    finally:
        await person.close()
    assert await _whoami(stack, answer["access_token"]) == 200
    return stack, answer["access_token"], username, answer["device_id"]


def _claims(stack: LoginStack, issuer: TestIssuer, sub: str, **changes: Any) -> dict[str, Any]:
    claims = {
        "iss": issuer.url,
        "aud": stack.client.client_id,
        "iat": int(time.time()),
        "exp": int(time.time()) + 120,
        "jti": uuid.uuid4().hex,
        "sub": sub,
        "events": EVENT,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(claims: dict[str, Any], key: Any, *, kid: str = "test-key", **header: Any) -> str:
    return jwt.encode(
        claims, key, algorithm="RS256", headers={"kid": kid, "typ": "logout+jwt", **header}
    )


@pytest.mark.parametrize(
    "forgery",
    [
        "unknown-kid",
        "right-kid-other-key",
        "alg-none",
        "alg-hs256",
        "wrong-audience",
        "wrong-issuer",
        "nonce",
        "no-event",
        "stale",
        "expired",
        "neither-sub-nor-sid",
        "typ-jwt-access-token",
        "not-a-jwt",
    ],
)
async def test_a_bad_logout_token_changes_nothing(
    session: tuple[LoginStack, str, str, str],
    issuer: TestIssuer,
    http: aiohttp.ClientSession,
    test_key: rsa.RSAPrivateKey,
    forgery: str,
) -> None:
    stack, token, username, device_id = session
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = _claims(stack, issuer, username)
    match forgery:
        case "unknown-kid":
            logout_token = _sign(claims, other, kid="someone-else")
        case "right-kid-other-key":
            logout_token = _sign(claims, other)
        case "alg-none":
            header = {"alg": "none", "kid": "test-key", "typ": "logout+jwt"}
            logout_token = f"{_b64(header)}.{_b64(claims)}."
        case "alg-hs256":
            # The public key's bytes as an HMAC secret: the classic confusion.
            public = json.dumps(_public_jwk(test_key, "test-key")).encode()
            head = _b64({"alg": "HS256", "kid": "test-key", "typ": "logout+jwt"})
            signing_input = f"{head}.{_b64(claims)}"
            mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
            logout_token = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
        case "wrong-audience":
            logout_token = _sign({**claims, "aud": "another-client"}, test_key)
        case "wrong-issuer":
            logout_token = _sign({**claims, "iss": "http://127.0.0.1:1/"}, test_key)
        case "nonce":
            logout_token = _sign({**claims, "nonce": "n-0S6_WzA2Mj"}, test_key)
        case "no-event":
            logout_token = _sign({**claims, "events": {"other": {}}}, test_key)
        case "stale":
            old = int(time.time()) - 3600
            logout_token = _sign({**claims, "iat": old, "exp": None}, test_key)
        case "expired":
            logout_token = _sign({**claims, "exp": int(time.time()) - 300}, test_key)
        case "neither-sub-nor-sid":
            logout_token = _sign({k: v for k, v in claims.items() if k != "sub"}, test_key)
        case "typ-jwt-access-token":
            logout_token = _sign(claims, test_key, typ="at+jwt")
        case _:
            logout_token = "not.a.jwt"
    status, body = await _post_logout_token(stack, logout_token)
    assert status == 400, body
    assert body["error"] == "invalid_request"
    assert await _whoami(stack, token) == 200
    assert device_id in await stack.devices(http, stack.user_id(username))


async def test_a_logout_token_is_used_once(
    session: tuple[LoginStack, str, str, str],
    issuer: TestIssuer,
    http: aiohttp.ClientSession,
    test_key: rsa.RSAPrivateKey,
) -> None:
    stack, token, username, device_id = session
    # By sub: every session the bridge made for this account at the issuer.
    logout_token = _sign(_claims(stack, issuer, username), test_key)
    assert (await _post_logout_token(stack, logout_token))[0] == 200
    assert await _whoami(stack, token) == 401
    assert device_id not in await stack.devices(http, stack.user_id(username))

    # A new session of the same account; the same logout token again must not end it.
    await asyncio.sleep(1.1)  # a new iat second (logout moments are in whole seconds)
    person = HttpBrowser()
    try:
        answer = await stack.sso_session(person, username)
    finally:
        await person.close()
    status, body = await _post_logout_token(stack, logout_token)
    assert (status, body["error"]) == (400, "invalid_request")
    assert await _whoami(stack, answer["access_token"]) == 200
    assert answer["device_id"] in await stack.devices(http, stack.user_id(username))


async def test_a_logout_token_arriving_in_pieces_is_read_whole(
    session: tuple[LoginStack, str, str, str],
    issuer: TestIssuer,
    test_key: rsa.RSAPrivateKey,
) -> None:
    stack, token, username, _device = session
    form = f"logout_token={_sign(_claims(stack, issuer, username), test_key)}".encode()

    async def in_two_pieces() -> AsyncIterator[bytes]:
        yield form[:100]
        await asyncio.sleep(0.05)
        yield form[100:]

    resp = await stack.bridge.post(
        f"/{BACKCHANNEL}",
        data=in_two_pieces(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status == 200, await resp.text()
    assert await _whoami(stack, token) == 401


async def test_a_valid_logout_token_for_an_unknown_session_is_accepted(
    session: tuple[LoginStack, str, str, str],
    issuer: TestIssuer,
    test_key: rsa.RSAPrivateKey,
) -> None:
    stack, token, username, _device = session
    claims = _claims(stack, issuer, username, sid="no-such-session")
    assert (await _post_logout_token(stack, _sign(claims, test_key)))[0] == 200
    assert await _whoami(stack, token) == 200


async def test_the_endpoint_wants_a_form(session: tuple[LoginStack, str, str, str]) -> None:
    stack = session[0]
    resp = await stack.bridge.post(f"/{BACKCHANNEL}", json={"logout_token": "x"})
    assert resp.status == 400
    resp = await stack.bridge.post(
        f"/{BACKCHANNEL}",
        data="logout_token=a&logout_token=b",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status == 400
