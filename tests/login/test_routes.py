"""The login layer's routes with fakes: what is answered by the bridge, never forwarded.

With a ``login`` section the bridge owns ``/login``, ``/refresh``, ``/logout``,
``/logout/all`` and the SSO redirect; the homeserver never sees any of them,
whatever the body, and every bad input is a Matrix error.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.fernet import Fernet
from pytest_aiohttp import AiohttpClient, AiohttpServer

from bridge.login.sso import CALLBACK_PATH, COOKIE
from bridge.state import CONFIG, STORE
from tests.fakes import BridgeClient, FakeHomeserver, FakeIssuer, bridge_config, start_bridge
from tests.support.clock import FakeClock

V3 = "/_matrix/client/v3"


@pytest.fixture
def clock() -> FakeClock:
    """The bridge's clock, from the real time (the fake issuer dates tokens by it)."""
    return FakeClock(time.time())


@pytest.fixture
async def bridge(
    aiohttp_client: AiohttpClient,
    aiohttp_server: AiohttpServer,
    homeserver: FakeHomeserver,
    tmp_path: Path,
    clock: FakeClock,
) -> BridgeClient:
    issuer = await FakeIssuer.start(aiohttp_server)
    store = {"path": str(tmp_path / "b.db"), "encryption_keys": [Fernet.generate_key().decode()]}
    config = bridge_config(issuer.url, homeserver.url, {"store": store, "login": {}})
    return await start_bridge(aiohttp_client, config, clock=clock)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "errcode"),
    [
        ("POST", f"{V3}/login", {"type": "m.login.password", "password": "x"}, 400, "M_UNKNOWN"),
        ("POST", f"{V3}/login", {"type": "m.login.application_service"}, 404, "M_UNRECOGNIZED"),
        ("POST", f"{V3}/login", {"type": "m.login.token"}, 400, "M_MISSING_PARAM"),
        ("POST", f"{V3}/login", {"type": "m.login.token", "token": "x"}, 403, "M_FORBIDDEN"),
        ("POST", f"{V3}/login", [], 400, "M_BAD_JSON"),
        ("POST", f"{V3}/login", None, 400, "M_NOT_JSON"),
        ("POST", f"{V3}/refresh", {}, 400, "M_MISSING_PARAM"),
        ("POST", f"{V3}/refresh", {"refresh_token": "x"}, 401, "M_UNKNOWN_TOKEN"),
        ("POST", f"{V3}/logout", {}, 401, "M_MISSING_TOKEN"),
        ("POST", f"{V3}/logout/all", {}, 401, "M_MISSING_TOKEN"),
        ("POST", "/_matrix/client/r0/logout", {}, 401, "M_MISSING_TOKEN"),
        # Still closed: a login token minted without the issuer.
        ("POST", "/_matrix/client/v1/login/get_token", {}, 404, "M_UNRECOGNIZED"),
        ("POST", "/_matrix/client/api/v1/logout", {}, 404, "M_UNRECOGNIZED"),
    ],
)
async def test_answered_by_the_bridge(
    bridge: BridgeClient,
    homeserver: FakeHomeserver,
    method: str,
    path: str,
    body: object,
    status: int,
    errcode: str,
) -> None:
    if body is None:
        resp = await bridge.request(method, path, data=b"{not json")
    else:
        resp = await bridge.request(method, path, json=body)
    answer = await resp.json()
    assert (resp.status, answer["errcode"]) == (status, errcode), answer
    assert isinstance(answer["error"], str)
    assert homeserver.requests == []


async def test_login_flows(bridge: BridgeClient, homeserver: FakeHomeserver) -> None:
    resp = await bridge.get("/_matrix/client/r0/login")
    flows = (await resp.json())["flows"]
    assert [f["type"] for f in flows] == ["m.login.sso", "m.login.token"]
    assert homeserver.requests == []


async def test_sso_redirect_goes_to_the_issuer_with_pkce_state_and_nonce(
    bridge: BridgeClient,
) -> None:
    resp = await bridge.get(
        f"{V3}/login/sso/redirect",
        params={"redirectUrl": "https://client.example.test/"},
        allow_redirects=False,
    )
    assert resp.status == 302
    location = resp.headers["Location"]
    assert "/oauth2/authorize?" in location
    for part in (
        "code_challenge_method=S256",
        "code_challenge=",
        "state=",
        "nonce=",
        "response_type=code",
        "urn%3Amatrix%3Aclient%3Adevice%3A",
    ):
        assert part in location
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Path=/_bridge/login/" in cookie
    assert "Secure" in cookie  # the public base URL is https


async def test_sso_redirect_without_a_redirect_url_is_an_error_page(bridge: BridgeClient) -> None:
    resp = await bridge.get(f"{V3}/login/sso/redirect", allow_redirects=False)
    assert resp.status == 400
    assert resp.content_type == "text/html"
    assert resp.headers["X-Frame-Options"] == "DENY"


async def test_an_sso_flow_expires_after_login_flow_ttl_by_the_apps_clock(
    bridge: BridgeClient, clock: FakeClock
) -> None:
    login = bridge.app[CONFIG].login
    assert login is not None

    async def callback_page(*, after: float) -> str:
        """The callback's answer to a flow started ``after`` seconds before it."""
        resp = await bridge.get(
            f"{V3}/login/sso/redirect",
            params={"redirectUrl": "https://client.example.test/"},
            allow_redirects=False,
        )
        (state,) = parse_qs(urlsplit(resp.headers["Location"]).query)["state"]
        cookie = resp.cookies[COOKIE].value
        clock.advance(after)
        resp = await bridge.get(CALLBACK_PATH, params={"state": state}, cookies={COOKIE: cookie})
        assert resp.status == 400
        return await resp.text()

    # Within its time the flow is found (and then wants its code); past it, it is gone.
    assert "no authorization code" in await callback_page(after=login.flow_ttl - 1)
    assert "has expired" in await callback_page(after=login.flow_ttl + 1)


async def test_a_device_less_jwts_logout_ends_it_for_good_and_it_alone(
    aiohttp_client: AiohttpClient,
    aiohttp_server: AiohttpServer,
    homeserver: FakeHomeserver,
    tmp_path: Path,
) -> None:
    """A JWT access token cannot be revoked at the issuer: once dropped from the cache,
    it would pass validation again, but for the moment that names it."""
    issuer = await FakeIssuer.start(aiohttp_server)
    store = {"path": str(tmp_path / "b.db"), "encryption_keys": [Fernet.generate_key().decode()]}
    config = bridge_config(
        issuer.url,
        homeserver.url,
        {"store": store, "login": {}, "issuer": {"validation": "jwt"}},
    )
    bridge = await start_bridge(aiohttp_client, config)
    claims = issuer.access_claims(device_id=None, lifetime=30 * 86400)  # beyond retention
    ended, kept = issuer.sign(claims), issuer.sign(issuer.access_claims(device_id=None))
    for token in (ended, kept):
        resp = await bridge.get(
            f"{V3}/account/whoami", headers={"Authorization": f"Bearer {token}"}
        )
        assert resp.status == 200, await resp.text()

    resp = await bridge.post(f"{V3}/logout", headers={"Authorization": f"Bearer {ended}"}, json={})
    assert resp.status == 200, await resp.text()
    forwarded = len(homeserver.client_requests)
    resp = await bridge.get(f"{V3}/account/whoami", headers={"Authorization": f"Bearer {ended}"})
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"
    assert len(homeserver.client_requests) == forwarded
    resp = await bridge.get(f"{V3}/account/whoami", headers={"Authorization": f"Bearer {kept}"})
    assert resp.status == 200
    # Dated at the token's exp: kept login.logout_retention past it, as long as it lives.
    (moment,) = await bridge.app[STORE].logout_moments_since(0)
    assert moment.not_before == claims["exp"]
