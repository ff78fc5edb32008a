"""Real clients through the login layer: Chromium for legacy SSO, matrix-nio for token login.

- Chromium (Debian's ``chromium``, driven by Playwright with ``executable_path``;
  every request to anything but 127.0.0.1 is aborted) opens
  ``/login/sso/redirect?redirectUrl=http://127.0.0.1:<port>/client``, logs in
  at oidc-provider's real login and consent forms, confirms on the bridge's
  page, and lands on the client URL with a ``loginToken``; the test exchanges
  it and then works as that device. The bridge's two pages are screenshotted
  (into ``docs/`` with ``UPDATE_SCREENSHOTS=1``).
- matrix-nio logs in with ``m.login.token`` through the bridge, creates a
  room, sends and syncs; ``POST /refresh`` gives a token nio works on, and the
  old refresh token is refused.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from tests.integration.conftest import auth, new_localpart
from tests.integration.login_stack import CLIENT_URL, V3, MakeLoginBridge
from tests.support.sso import CALLBACK, HttpBrowser

log = logging.getLogger("tests.browser")
DOCS = Path(__file__).resolve().parents[2] / "docs"


def chromium_path() -> str:
    """Debian's Chromium: the binary itself (``/usr/bin/chromium`` is a wrapper script)."""
    for candidate in ("/usr/lib/chromium/chromium", shutil.which("chromium") or ""):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("Debian's chromium is not installed: run `make install` (make browser)")


@pytest.fixture
async def client_site(aiohttp_server: AiohttpServer) -> tuple[str, list[str]]:
    """A stand-in for the Matrix client's web page: it records every loginToken it gets."""
    tokens: list[str] = []

    async def page(request: web.Request) -> web.Response:
        tokens.extend(request.query.getall("loginToken", []))
        return web.Response(text="<h1>The Matrix client</h1>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/client", page)
    server = await aiohttp_server(app)
    return str(server.make_url("/client")), tokens


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path(),
            # Nothing but loopback resolves, whatever a page asks for.
            args=["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"],
        )
        try:
            yield browser
        finally:
            await browser.close()


def _screenshot_paths(tmp_path: Path, name: str) -> list[Path]:
    paths = [tmp_path / name]
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        paths.append(DOCS / name)
    return paths


async def test_sso_in_a_real_browser(
    make_login_bridge: MakeLoginBridge,
    chromium: Any,
    client_site: tuple[str, list[str]],
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    client_url, received = client_site
    stack = await make_login_bridge("synapse", "device_login")
    context = await chromium.new_context(viewport={"width": 880, "height": 400})
    outside: list[str] = []

    async def loopback_only(route: Any) -> None:
        host = urlsplit(route.request.url).hostname
        if host == "127.0.0.1":
            await route.continue_()
        else:
            outside.append(str(host))
            await route.abort()

    await context.route("**/*", loopback_only)
    page = await context.new_page()
    alice = new_localpart("alice")
    query = urlencode({"redirectUrl": client_url})
    await page.goto(f"{stack.base}_matrix/client/v3/login/sso/redirect?{query}")

    # oidc-provider's login form, then its consent form.
    await page.fill("input[name=login]", alice)
    await page.fill("input[name=password]", "any password")
    await page.click("button[type=submit]")
    await page.wait_for_load_state()
    if "/interaction/" in page.url:
        await page.click("button[type=submit]")
    await page.wait_for_url(f"{stack.base}{CALLBACK}*")

    # The bridge's confirmation page.
    assert await page.title() == "Continue to your client?"
    body = await page.inner_text("body")
    assert f"@{alice}:bridge.test" in body
    assert urlsplit(client_url).netloc in body
    for path in _screenshot_paths(tmp_path, "sso-confirmation.png"):
        await page.screenshot(path=str(path))
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{client_url}?*")
    login_token = parse_qs(urlsplit(page.url).query)["loginToken"][0]
    assert received == [login_token]

    # The bridge's error page: the same callback again is a used-up flow.
    error = await context.new_page()
    await error.goto(f"{stack.base}{CALLBACK}?code=x&state=forged-state")
    assert await error.title() == "The login did not work"
    for path in _screenshot_paths(tmp_path, "sso-error.png"):
        await error.screenshot(path=str(path))
    await context.close()
    assert outside == [] or set(outside) == {"fonts.googleapis.com"}, outside

    # The client exchanges the token and works as the new device.
    status, answer = await stack.token_login(login_token)
    assert status == 200, answer
    token = answer["access_token"]
    resp = await stack.bridge.get(f"{V3}/account/whoami", headers=auth(token))
    me = await resp.json()
    assert (me["user_id"], me["device_id"]) == (answer["user_id"], answer["device_id"])
    resp = await stack.bridge.post(f"{V3}/createRoom", headers=auth(token), json={})
    room_id = (await resp.json())["room_id"]
    resp = await stack.bridge.put(
        f"{V3}/rooms/{room_id}/send/m.room.message/t1",
        headers=auth(token),
        json={"msgtype": "m.text", "body": "hello from the browser login"},
    )
    assert resp.status == 200
    resp = await stack.bridge.get(f"{V3}/sync", headers=auth(token))
    timeline = (await resp.json())["rooms"]["join"][room_id]["timeline"]["events"]
    assert any(e["content"].get("body") == "hello from the browser login" for e in timeline)
    elapsed = time.monotonic() - started
    print(f"browser SSO test: {elapsed:.1f} s")


async def test_matrix_nio_token_login_and_refresh(
    make_login_bridge: MakeLoginBridge, http: aiohttp.ClientSession
) -> None:
    import nio

    stack = await make_login_bridge("synapse", "device_login")
    person = HttpBrowser()
    try:
        login_token, _ = await person.sso_login(stack.base, new_localpart("nio"), CLIENT_URL)
    finally:
        await person.close()

    client = nio.AsyncClient(stack.base.rstrip("/"))
    try:
        response = await client.login(token=login_token, device_name="nio bot")
        assert isinstance(response, nio.LoginResponse), response
        user_id, device_id = response.user_id, response.device_id
        created = await client.room_create(name="nio room")
        assert isinstance(created, nio.RoomCreateResponse), created
        sent = await client.room_send(
            created.room_id, "m.room.message", {"msgtype": "m.text", "body": "from nio"}
        )
        assert isinstance(sent, nio.RoomSendResponse), sent
        synced = await client.sync(timeout=0)
        assert isinstance(synced, nio.SyncResponse), synced
        assert created.room_id in synced.rooms.join

        # nio does not refresh by itself: the refresh the bridge answered at login.
        answer = await _refresh(http, stack.base, await _login_refresh_token(response))
        client.access_token = answer["access_token"]
        whoami = await client.whoami()
        assert isinstance(whoami, nio.WhoamiResponse), whoami
        assert (whoami.user_id, whoami.device_id) == (user_id, device_id)
        again = await client.sync(timeout=0, since=synced.next_batch)
        assert isinstance(again, nio.SyncResponse), again
    finally:
        await client.close()


async def _login_refresh_token(response: Any) -> str:
    """The refresh token of nio's login answer (nio reads the body, but keeps no field
    for it)."""
    body = await response.transport_response.json()
    return str(body["refresh_token"])


async def _refresh(http: aiohttp.ClientSession, base: str, refresh_token: str) -> dict[str, Any]:
    async with http.post(
        f"{base}_matrix/client/v3/refresh", json={"refresh_token": refresh_token}
    ) as resp:
        answer: dict[str, Any] = await resp.json()
        assert resp.status == 200, answer
    async with http.post(
        f"{base}_matrix/client/v3/refresh", json={"refresh_token": refresh_token}
    ) as resp:
        assert resp.status == 401
        assert (await resp.json())["soft_logout"] is False
    return answer
