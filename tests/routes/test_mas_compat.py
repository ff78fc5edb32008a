"""With issuer.kind: mas, legacy login, logout and refresh go to MAS's compatibility layer."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from aiohttp import web
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpClient, AiohttpServer
from yarl import URL

from tests.fakes import BridgeClient, FakeHomeserver, FakeIssuer, bridge_config, start_bridge

MAS_MODE = {"issuer": {"kind": "mas", "introspection": {"auth": "mas_shared_secret"}}}


@dataclass(frozen=True)
class Received:
    method: str
    path_qs: str
    headers: CIMultiDict[str]
    body: bytes


class FakeMasCompat:
    """Records what reaches MAS's compatibility layer and answers like it."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        return app

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        self.received.append(
            Received(
                request.method,
                request.rel_url.raw_path_qs,
                CIMultiDict(request.headers),
                await request.read(),
            )
        )
        if "/sso/redirect" in request.path:
            raise web.HTTPFound(location="https://mas.example/authorize?x=1")
        return web.json_response({"flows": [{"type": "m.login.password"}], "from": "mas"})


@pytest.fixture
async def mas(aiohttp_server: AiohttpServer) -> FakeMasCompat:
    fake = FakeMasCompat()
    server = await aiohttp_server(fake.app())
    fake.url = str(server.make_url("/"))
    return fake


@pytest.fixture
async def issuer(aiohttp_server: AiohttpServer) -> FakeIssuer:
    return await FakeIssuer.start(aiohttp_server)


@pytest.fixture
async def bridge(
    aiohttp_client: AiohttpClient,
    issuer: FakeIssuer,
    homeserver: FakeHomeserver,
    mas: FakeMasCompat,
) -> BridgeClient:
    config = bridge_config(
        issuer.url, homeserver.url, MAS_MODE, {"issuer": {"compat_url": mas.url}}
    )
    return await start_bridge(aiohttp_client, config)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/_matrix/client/v3/login"),
        ("POST", "/_matrix/client/v3/login"),
        ("POST", "/_matrix/client/r0/login"),
        ("POST", "/_matrix/client/v3/logout"),
        ("POST", "/_matrix/client/v3/logout/all"),
        ("POST", "/_matrix/client/v3/refresh"),
        ("GET", "/_matrix/client/v3/login/sso/redirect?redirectUrl=https%3A%2F%2Fapp.example%2F"),
        ("GET", "/_matrix/client/v3/login/sso/redirect/oidc-google?redirectUrl=x"),
    ],
)
async def test_compat_paths_reach_mas_unchanged(
    bridge: BridgeClient,
    mas: FakeMasCompat,
    homeserver: FakeHomeserver,
    issuer: FakeIssuer,
    method: str,
    path: str,
) -> None:
    body = b'{"type": "m.login.password", "password": "p&ss;"}' if method == "POST" else b""
    resp = await bridge.request(
        method,
        URL(path, encoded=True),
        data=body or None,
        headers={
            "Authorization": "Bearer mct_compat_token",
            "Content-Type": "application/json",
            "X-Forwarded-For": "6.6.6.6",
            "Forwarded": "for=6.6.6.6",
        },
        allow_redirects=False,
    )
    [received] = mas.received
    assert (received.method, received.path_qs) == (method, path)
    assert received.body == body
    # MAS checks its compat tokens itself; it sees the real client, not a claimed one.
    assert received.headers["Authorization"] == "Bearer mct_compat_token"
    assert received.headers.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert received.headers["X-Forwarded-Proto"] == "http"
    assert "Forwarded" not in received.headers
    if "sso/redirect" in path:
        assert resp.status == 302
        assert resp.headers["Location"] == "https://mas.example/authorize?x=1"
    else:
        assert resp.status == 200
        assert (await resp.json())["from"] == "mas"
    assert homeserver.requests == []
    assert issuer.introspections == []  # no bridge token check: MAS's own


async def test_without_mas_the_doors_stay_closed(
    aiohttp_client: AiohttpClient, issuer: FakeIssuer, homeserver: FakeHomeserver
) -> None:
    bridge = await start_bridge(aiohttp_client, bridge_config(issuer.url, homeserver.url))
    resp = await bridge.post("/_matrix/client/v3/logout", headers={"Authorization": "Bearer x"})
    assert resp.status == 404
    assert (await resp.json())["errcode"] == "M_UNRECOGNIZED"
    assert homeserver.requests == []


async def test_mas_unreachable_is_503(
    aiohttp_client: AiohttpClient, issuer: FakeIssuer, homeserver: FakeHomeserver
) -> None:
    config = bridge_config(
        issuer.url, homeserver.url, MAS_MODE, {"issuer": {"compat_url": "http://127.0.0.1:9/"}}
    )
    bridge = await start_bridge(aiohttp_client, config)
    resp = await bridge.get("/_matrix/client/v3/login")
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "5"
