"""The bridge's login layer with a real issuer (oidc-provider) and real homeservers.

Every client can log in: SSO through the issuer to a ``loginToken``, then
``m.login.token``; refresh; the opt-in password grant. Logging out means it:
``/logout`` and ``/logout/all`` refuse the tokens on the very next request,
the issuer calls them inactive, the homeserver devices are gone. And the
flow refuses what it must: a used ``loginToken``, a forged ``state``, a code
obtained without the flow's PKCE verifier, a callback in another browser, a
``redirectUrl`` outside the allow-list.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest

from tests.integration.conftest import STACKS, Login, auth, new_localpart
from tests.integration.login_stack import (
    CLIENT_URL,
    V3,
    LoginStack,
    MakeLoginBridge,
)
from tests.support.issuer import TestIssuer
from tests.support.sso import CALLBACK, HttpBrowser, issuer_metadata

WHOAMI = f"{V3}/account/whoami"


@pytest.fixture
async def browser() -> AsyncIterator[HttpBrowser]:
    person = HttpBrowser()
    yield person
    await person.close()


async def whoami(stack: LoginStack, token: str) -> tuple[int, dict[str, Any]]:
    resp = await stack.bridge.get(WHOAMI, headers=auth(token))
    return resp.status, await resp.json()


async def introspect(http: aiohttp.ClientSession, issuer: TestIssuer, token: str) -> bool:
    """Whether the issuer itself calls ``token`` active (asked directly)."""
    meta = await issuer_metadata(http, issuer)
    basic = aiohttp.encode_basic_auth(issuer.bridge_client_id, issuer.bridge_client_secret)
    async with http.post(
        meta["introspection_endpoint"], data={"token": token}, headers={"Authorization": basic}
    ) as resp:
        return bool((await resp.json())["active"])


# -- logging in -------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "strategy"), STACKS, ids=[f"{h}-{s}" for h, s in STACKS])
async def test_sso_login_then_token_login_works_as_the_new_device(
    make_login_bridge: MakeLoginBridge,
    browser: HttpBrowser,
    http: aiohttp.ClientSession,
    kind: str,
    strategy: str,
) -> None:
    stack = await make_login_bridge(kind, strategy)
    alice = new_localpart("alice")
    login_token, confirmation = await browser.sso_login(stack.base, alice, CLIENT_URL)
    assert "127.0.0.1:9" in confirmation.text  # the client's host is named

    status, answer = await stack.token_login(login_token, initial_device_display_name="Phone")
    assert status == 200, answer
    assert answer["user_id"] == stack.user_id(alice)
    assert answer["well_known"]["m.homeserver"]["base_url"] == stack.base
    assert answer["refresh_token"]
    assert 0 < answer["expires_in_ms"] <= 3600 * 1000
    device_id = answer["device_id"]
    assert len(device_id) == 10
    assert device_id.isupper()

    status, me = await whoami(stack, answer["access_token"])
    assert status == 200, me
    assert me["user_id"] == stack.user_id(alice)
    if kind != "dendrite":
        assert me["device_id"] == device_id
    assert device_id in await stack.devices(http, stack.user_id(alice))
    # The device was made at login, named as the client asked.
    token = answer["access_token"]
    resp = await stack.bridge.get(f"{V3}/devices/{device_id}", headers=auth(token))
    assert resp.status == 200
    assert (await resp.json())["display_name"] == "Phone"


async def test_login_flows_advertise_sso_and_token_not_password(
    make_login_bridge: MakeLoginBridge,
) -> None:
    stack = await make_login_bridge()
    resp = await stack.bridge.get(f"{V3}/login")
    flows = (await resp.json())["flows"]
    assert [f["type"] for f in flows] == ["m.login.sso", "m.login.token"]
    assert flows[0]["oauth_aware_preferred"] is True
    assert flows[0]["org.matrix.msc3824.delegated_oidc_compatibility"] is True
    assert flows[0]["identity_providers"] == [{"id": "oidc", "name": "Single sign-on"}]
    resp = await stack.bridge.post(
        f"{V3}/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "x"},
            "password": "password-of-x",
        },
    )
    assert resp.status == 400
    assert (await resp.json())["errcode"] == "M_UNKNOWN"


async def test_login_with_an_identity_provider_id(
    make_login_bridge: MakeLoginBridge, browser: HttpBrowser
) -> None:
    stack = await make_login_bridge()
    assert (await browser.start(stack.base, CLIENT_URL, idp="oidc")).status == 302
    unknown = await browser.start(stack.base, CLIENT_URL, idp="google")
    assert unknown.status == 404
    assert "Unknown identity provider" in unknown.text


async def test_password_grant_opt_in(
    make_login_bridge: MakeLoginBridge, http: aiohttp.ClientSession
) -> None:
    stack = await make_login_bridge(password=True)
    resp = await stack.bridge.get(f"{V3}/login")
    assert "m.login.password" in [f["type"] for f in (await resp.json())["flows"]]
    bot = new_localpart("bot")
    login = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": bot}}

    resp = await stack.bridge.post(f"{V3}/login", json={**login, "password": "wrong"})
    assert resp.status == 403
    assert (await resp.json())["errcode"] == "M_FORBIDDEN"

    resp = await stack.bridge.post(
        f"{V3}/login",
        json={**login, "password": f"password-of-{bot}", "device_id": "BOTDEVICE1"},
    )
    answer = await resp.json()
    assert resp.status == 200, answer
    assert answer["device_id"] == "BOTDEVICE1"
    assert answer["user_id"] == stack.user_id(bot)
    status, me = await whoami(stack, answer["access_token"])
    assert (status, me["user_id"], me["device_id"]) == (200, stack.user_id(bot), "BOTDEVICE1")

    # Another server's user ID is nobody here.
    resp = await stack.bridge.post(
        f"{V3}/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": f"@{bot}:elsewhere.test"},
            "password": f"password-of-{bot}",
        },
    )
    assert resp.status == 403


# -- refresh ----------------------------------------------------------------------------


async def test_refresh_gives_a_working_token_and_uses_the_old_refresh_token_up(
    make_login_bridge: MakeLoginBridge, browser: HttpBrowser
) -> None:
    stack = await make_login_bridge()
    first = await stack.sso_session(browser, new_localpart("carol"))

    resp = await stack.bridge.post(f"{V3}/refresh", json={"refresh_token": first["refresh_token"]})
    second = await resp.json()
    assert resp.status == 200, second
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]  # the issuer rotates
    assert 0 < second["expires_in_ms"] <= 3600 * 1000
    status, me = await whoami(stack, second["access_token"])
    assert (status, me["user_id"]) == (200, first["user_id"])

    resp = await stack.bridge.post(f"{V3}/refresh", json={"refresh_token": first["refresh_token"]})
    assert resp.status == 401
    assert await resp.json() == {
        "errcode": "M_UNKNOWN_TOKEN",
        "error": "Unknown refresh token",
        "soft_logout": False,
    }
    resp = await stack.bridge.post(f"{V3}/refresh", json={"refresh_token": "made-up"})
    assert resp.status == 401
    assert (await resp.json())["soft_logout"] is False
    resp = await stack.bridge.post(f"{V3}/refresh", json={})
    assert resp.status == 400
    assert (await resp.json())["errcode"] == "M_MISSING_PARAM"


# -- what the flow refuses ----------------------------------------------------------------


async def test_a_login_token_is_used_once(
    make_login_bridge: MakeLoginBridge, browser: HttpBrowser
) -> None:
    stack = await make_login_bridge()
    login_token, _ = await browser.sso_login(stack.base, new_localpart("dave"), CLIENT_URL)
    first, second = await asyncio.gather(
        stack.token_login(login_token), stack.token_login(login_token)
    )
    statuses = sorted([first[0], second[0]])
    assert statuses == [200, 403], (first, second)
    refused = first if first[0] == 403 else second
    assert refused[1] == {"errcode": "M_FORBIDDEN", "error": "Invalid login token"}
    assert "access_token" not in refused[1]
    status, _answer = await stack.token_login(login_token)
    assert status == 403
    status, _answer = await stack.token_login("made-up-token")
    assert status == 403


async def test_a_forged_state_is_refused(
    make_login_bridge: MakeLoginBridge, browser: HttpBrowser
) -> None:
    stack = await make_login_bridge()
    started = await browser.start(stack.base, CLIENT_URL)
    callback = await browser.authorize(
        started.headers["Location"], new_localpart("erin"), stop_at=stack.base + CALLBACK
    )
    forged = callback.replace("state=", "state=forged")
    page = await browser.get(forged)
    assert page.status == 400
    assert "expired or was already completed" in page.text
    assert "loginToken" not in page.headers.get("Location", "")
    # Nor is the real state any good in another browser.
    other = HttpBrowser()
    try:
        page = await other.get(callback)
    finally:
        await other.close()
    assert page.status == 400
    assert "another browser" in page.text
    # And the flow is used up: the right browser cannot finish it either.
    page = await browser.get(callback)
    assert page.status == 400


@pytest.mark.parametrize("challenge", ["another", "none"])
async def test_a_code_without_the_flows_pkce_verifier_is_refused(
    make_login_bridge: MakeLoginBridge,
    browser: HttpBrowser,
    http: aiohttp.ClientSession,
    issuer: TestIssuer,
    challenge: str,
) -> None:
    """An attacker's own authorization code (made with another PKCE challenge, or none)
    injected into a victim's callback: the bridge exchanges it with the victim's flow's
    verifier, and the issuer refuses."""
    stack = await make_login_bridge()
    started = await browser.start(stack.base, CLIENT_URL)
    victim_state = started.headers["Location"].split("state=")[1].split("&")[0]

    meta = await issuer_metadata(http, issuer)
    query = {
        "response_type": "code",
        "client_id": stack.client.client_id,
        "redirect_uri": stack.base + CALLBACK,
        "scope": "openid urn:matrix:client:api:* urn:matrix:client:device:ATTACKER01",
        "state": "attacker",
        "nonce": "attacker",
    }
    if challenge == "another":
        query |= {
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "code_challenge_method": "S256",
        }
    attacker = HttpBrowser()
    try:
        url = f"{meta['authorization_endpoint']}?{urlencode(query)}"
        callback = await attacker.authorize(url, "mallory", stop_at=stack.base + CALLBACK)
    finally:
        await attacker.close()
    answer = parse_qs(urlsplit(callback).query)
    if challenge == "none" and "code" not in answer:
        # This issuer insists on PKCE itself; a made-up code stands in for the attacker's.
        assert answer["error"] == ["invalid_request"], answer
        answer["code"] = ["made-up-code"]
    code = answer["code"][0]
    page = await browser.get(f"{stack.base}{CALLBACK}?code={code}&state={victim_state}")
    assert page.status == 403, page.text
    assert "refused this login" in page.text
    assert "Continue" not in page.text


async def test_a_redirect_url_outside_the_allow_list_is_refused(
    make_login_bridge: MakeLoginBridge, browser: HttpBrowser
) -> None:
    stack = await make_login_bridge(redirect_url_allowlist=["https://app.example.test/"])
    for refused in (
        "https://evil.example.test/",
        "https://app.example.test.evil.test/",
        "http://app.example.test/",
        "https://app.example.test:444/",
        "javascript:alert(1)",
    ):
        page = await browser.start(stack.base, refused)
        assert page.status in (400, 403), refused
        assert "Location" not in page.headers
        assert page.headers["X-Frame-Options"] == "DENY"
    assert (await browser.start(stack.base, "https://app.example.test/#/home")).status == 400
    assert (await browser.start(stack.base, "https://app.example.test/welcome")).status == 302


# -- logging out ------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "strategy"), STACKS, ids=[f"{h}-{s}" for h, s in STACKS])
async def test_logout_refuses_the_token_at_once_revokes_it_and_deletes_the_device(
    make_login_bridge: MakeLoginBridge,
    browser: HttpBrowser,
    http: aiohttp.ClientSession,
    issuer: TestIssuer,
    kind: str,
    strategy: str,
) -> None:
    stack = await make_login_bridge(kind, strategy)
    session = await stack.sso_session(browser, new_localpart("frank"))
    token, user_id, device_id = session["access_token"], session["user_id"], session["device_id"]
    assert (await whoami(stack, token))[0] == 200  # cached now
    assert device_id in await stack.devices(http, user_id)

    resp = await stack.bridge.post(f"{V3}/logout", headers=auth(token), json={})
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {}

    status, answer = await whoami(stack, token)
    assert status == 401
    assert answer["errcode"] == "M_UNKNOWN_TOKEN"
    assert not await introspect(http, issuer, token)
    assert device_id not in await stack.devices(http, user_id)
    resp = await stack.bridge.post(
        f"{V3}/refresh", json={"refresh_token": session["refresh_token"]}
    )
    assert resp.status == 401
    assert not await introspect(http, issuer, session["refresh_token"])


@pytest.mark.parametrize(("kind", "strategy"), STACKS, ids=[f"{h}-{s}" for h, s in STACKS])
async def test_logout_all_ends_every_device_and_every_earlier_token(
    make_login_bridge: MakeLoginBridge,
    browser: HttpBrowser,
    http: aiohttp.ClientSession,
    login: Login,
    kind: str,
    strategy: str,
) -> None:
    stack = await make_login_bridge(kind, strategy)
    grace = new_localpart("grace")
    one = await stack.sso_session(browser, grace)
    other_browser = HttpBrowser()
    try:
        two = await stack.sso_session(other_browser, grace)
    finally:
        await other_browser.close()
    # And a token of an OAuth-native client, obtained at the issuer directly.
    native = await login(grace, "NATIVEDEV1")
    for token in (one["access_token"], two["access_token"], native):
        assert (await whoami(stack, token))[0] == 200
    user_id = one["user_id"]
    assert {one["device_id"], two["device_id"], "NATIVEDEV1"} <= await stack.devices(http, user_id)

    resp = await stack.bridge.post(f"{V3}/logout/all", headers=auth(one["access_token"]), json={})
    assert resp.status == 200, await resp.text()

    for token in (one["access_token"], two["access_token"], native):
        status, answer = await whoami(stack, token)
        assert (status, answer["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    # Every device the bridge made: both SSO devices, and the OAuth-native client's
    # (made on first sight).
    assert not {one["device_id"], two["device_id"], "NATIVEDEV1"} & await stack.devices(
        http, user_id
    )
    for session in (one, two):
        resp = await stack.bridge.post(
            f"{V3}/refresh", json={"refresh_token": session["refresh_token"]}
        )
        assert resp.status == 401

    # A login after that moment works (iat is in whole seconds: the next one).
    await asyncio.sleep(1.1)
    three = await stack.sso_session(browser, grace)
    assert (await whoami(stack, three["access_token"]))[0] == 200


async def test_logout_needs_a_valid_token(make_login_bridge: MakeLoginBridge) -> None:
    stack = await make_login_bridge()
    resp = await stack.bridge.post(f"{V3}/logout", json={})
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_MISSING_TOKEN"
    resp = await stack.bridge.post(f"{V3}/logout/all", headers=auth("made-up"), json={})
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"
