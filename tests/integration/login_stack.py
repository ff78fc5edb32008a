"""A bridge with the login layer in front of a real homeserver and the real issuer.

``make_login_bridge(kind, strategy)`` picks the bridge's port first (the issuer
must know its callback), registers the bridge's login client at the issuer,
and serves the bridge on that port.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web

from bridge.app import create_app
from bridge.config import AppserviceConfig, Strategy, parse_config
from tests.fakes import BridgeClient
from tests.support.issuer import TestIssuer
from tests.support.net import free_port
from tests.support.sso import HttpBrowser, LoginClient, login_section, register_login_client
from tests.support.stack import SERVER_NAME, bridge_config_document, store_section

V3 = "/_matrix/client/v3"
HomeserverKind = Literal["synapse", "dendrite"]
CLIENT_URL = "http://127.0.0.1:9/client"


@dataclass
class LoginStack:
    """A bridge with a login section, and what it stands in front of."""

    kind: HomeserverKind
    strategy: Strategy
    homeserver_url: str
    appservice: AppserviceConfig
    bridge: BridgeClient
    base: str  # the bridge's public base URL, with its trailing slash
    client: LoginClient
    document: dict[str, Any]

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{SERVER_NAME}"

    async def devices(self, http: aiohttp.ClientSession, user_id: str) -> set[str]:
        """The user's devices, asked of the homeserver directly (as the appservice)."""
        async with http.get(
            f"{self.homeserver_url}{V3}/devices?user_id={quote(user_id)}",
            headers={"Authorization": f"Bearer {self.appservice.as_token}"},
        ) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            return {d["device_id"] for d in body.get("devices") or []}

    async def token_login(self, login_token: str, **extra: object) -> tuple[int, dict[str, Any]]:
        resp = await self.bridge.post(
            f"{V3}/login", json={"type": "m.login.token", "token": login_token, **extra}
        )
        return resp.status, await resp.json()

    async def sso_session(self, browser: HttpBrowser, localpart: str) -> dict[str, Any]:
        """A whole legacy login of ``localpart`` in ``browser``: SSO, then
        ``m.login.token``; the login's answer (tokens, user and device)."""
        login_token, _page = await browser.sso_login(self.base, localpart, CLIENT_URL)
        status, answer = await self.token_login(login_token)
        assert status == 200, answer
        return answer


MakeLoginBridge = Callable[..., Awaitable[LoginStack]]


@pytest.fixture
def make_login_bridge(
    request: pytest.FixtureRequest,
    aiohttp_client: Callable[..., Awaitable[BridgeClient]],
    issuer: TestIssuer,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> MakeLoginBridge:
    async def make(
        kind: HomeserverKind = "synapse",
        strategy: Strategy = "device_login",
        *,
        store: dict[str, object] | None = None,
        password: bool = False,
        **login_extra: object,
    ) -> LoginStack:
        server = request.getfixturevalue(kind)
        appservice: AppserviceConfig = request.getfixturevalue(
            "appservice" if strategy == "masquerade" else "device_login_appservice"
        )
        port = free_port()
        base = f"http://127.0.0.1:{port}/"
        client = await register_login_client(http, issuer, base, password=password)
        document = bridge_config_document(
            issuer=issuer,
            homeserver_url=server.base_url,
            appservice=appservice,
            public_baseurl=base,
            strategy=strategy,
            store=store or store_section(tmp_path / f"bridge-{port}.db"),
            login=login_section(client, password_grant=password, **login_extra),
        )
        app: web.Application = create_app(parse_config(document))
        bridge = await aiohttp_client(app, server_kwargs={"port": port})
        return LoginStack(
            kind, strategy, server.base_url, appservice, bridge, base, client, document
        )

    return make
