"""The bridge's login layer against the real test issuer: its client, and a browser made of HTTP.

``register_login_client()`` registers the bridge's confidential client at the
issuer (dynamic registration), with the bridge's callback, its back-channel
logout URI and the grants the login layer uses. ``login_section()`` is the
bridge's ``login`` config for it.

:class:`HttpBrowser` plays a person's browser with a cookie jar: it starts an
SSO login at the bridge, logs in at the issuer's development login and consent
forms, reaches the bridge's confirmation page, confirms, and lands on the
client's ``redirectUrl`` with a ``loginToken``. Each step is its own method, so
that tests can tamper between them.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import aiohttp

from tests.support.issuer import TestIssuer

CALLBACK = "_bridge/login/callback"
BACKCHANNEL = "_bridge/backchannel_logout"
_FORM_ACTION = re.compile(r'<form[^>]*\baction="([^"]+)"')
_FORM_PROMPT = re.compile(r'name="prompt" value="([^"]+)"')
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')


@dataclass(frozen=True)
class LoginClient:
    client_id: str
    client_secret: str


async def issuer_metadata(http: aiohttp.ClientSession, issuer: TestIssuer) -> dict[str, Any]:
    async with http.get(issuer.url + ".well-known/openid-configuration") as resp:
        document: dict[str, Any] = await resp.json()
        return document


async def register_login_client(
    http: aiohttp.ClientSession, issuer: TestIssuer, bridge_base: str, *, password: bool = False
) -> LoginClient:
    """The bridge's client at the issuer, for a bridge whose public base URL is
    ``bridge_base`` (with its trailing slash)."""
    meta = await issuer_metadata(http, issuer)
    registration = {
        "client_name": "matrix-oidc-bridge login",
        "application_type": "web",
        "redirect_uris": [bridge_base + CALLBACK],
        "token_endpoint_auth_method": "client_secret_basic",
        "grant_types": ["authorization_code", "refresh_token", *(["password"] if password else [])],
        "response_types": ["code"],
        "backchannel_logout_uri": bridge_base + BACKCHANNEL,
        "backchannel_logout_session_required": True,
    }
    async with http.post(meta["registration_endpoint"], json=registration) as resp:
        body = await resp.json()
        assert resp.status == 201, body
    return LoginClient(str(body["client_id"]), str(body["client_secret"]))


def login_section(client: LoginClient, **extra: object) -> dict[str, object]:
    return {"client_id": client.client_id, "client_secret": client.client_secret, **extra}


@dataclass
class Page:
    """One answer the browser got: status, final URL, body, headers."""

    status: int
    url: str
    text: str
    headers: dict[str, str]

    def form(self) -> tuple[str, dict[str, str]]:
        """The page's form: its action (absolute) and hidden fields."""
        action = _FORM_ACTION.search(self.text)
        assert action is not None, self.text[:500]
        fields = {html.unescape(k): html.unescape(v) for k, v in _HIDDEN.findall(self.text)}
        return urljoin(self.url, html.unescape(action.group(1))), fields


class HttpBrowser:
    """A person's browser: a cookie jar, redirects followed by hand."""

    def __init__(self) -> None:
        self.session = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            timeout=aiohttp.ClientTimeout(total=30),
        )

    async def close(self) -> None:
        await self.session.close()

    async def get(self, url: str) -> Page:
        async with self.session.get(url, allow_redirects=False) as resp:
            return Page(resp.status, url, await resp.text(), dict(resp.headers))

    async def post(self, url: str, form: dict[str, str]) -> Page:
        async with self.session.post(url, data=form, allow_redirects=False) as resp:
            return Page(resp.status, url, await resp.text(), dict(resp.headers))

    async def start(self, bridge_base: str, redirect_url: str, *, idp: str | None = None) -> Page:
        """``GET /login/sso/redirect``: the bridge's answer (302 to the issuer, or a page)."""
        path = "_matrix/client/v3/login/sso/redirect" + (f"/{idp}" if idp else "")
        return await self.get(f"{bridge_base}{path}?{urlencode({'redirectUrl': redirect_url})}")

    async def authorize(self, url: str, username: str, *, stop_at: str) -> str:
        """Follow an authorization request through the issuer's login and consent; return
        the URL the issuer sends the browser to (starting with ``stop_at``), unfollowed."""
        method, data = "GET", None
        for _ in range(20):
            if method == "GET":
                page = await self.get(url)
            else:
                assert data is not None
                page = await self.post(url, data)
            location = page.headers.get("Location")
            if location is not None:
                url, method, data = urljoin(url, location), "GET", None
                if url.startswith(stop_at):
                    return url
                continue
            action, prompt = _FORM_ACTION.search(page.text), _FORM_PROMPT.search(page.text)
            assert page.status == 200, f"{page.status} {page.text[:500]}"
            assert action, page.text[:500]
            assert prompt, page.text[:500]
            url, method = urljoin(url, html.unescape(action.group(1))), "POST"
            if prompt.group(1) == "login":
                data = {"prompt": "login", "login": username, "password": "any password"}
            else:
                data = {"prompt": prompt.group(1)}
        raise AssertionError("the authorization did not come back")

    async def confirm(self, page: Page) -> Page:
        """Press "Continue" on the bridge's confirmation page."""
        action, fields = page.form()
        return await self.post(action, fields)

    async def sso_login(
        self, bridge_base: str, username: str, redirect_url: str
    ) -> tuple[str, Page]:
        """A whole SSO login; the ``loginToken`` and the confirmation page."""
        started = await self.start(bridge_base, redirect_url)
        assert started.status == 302, started.text[:500]
        callback = await self.authorize(
            started.headers["Location"], username, stop_at=bridge_base + CALLBACK
        )
        confirmation = await self.get(callback)
        assert confirmation.status == 200, confirmation.text[:500]
        done = await self.confirm(confirmation)
        assert done.status == 302, done.text[:500]
        location = done.headers["Location"]
        assert location.startswith(redirect_url), location
        return parse_qs(urlsplit(location).query)["loginToken"][0], confirmation

    async def end_issuer_session(self, issuer: TestIssuer) -> Page:
        """Log out at the issuer (RP-initiated logout, "yes, sign me out"): the issuer
        then sends its back-channel logout tokens."""
        page = await self.get(issuer.url + "session/end")
        assert page.status == 200, page.text[:500]
        action, fields = page.form()
        return await self.post(action, {**fields, "logout": "yes"})
