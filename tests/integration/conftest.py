"""The real test stack: one Synapse and one oidc-provider issuer for the session.

Tests create their own users (random localparts), so they never see each
other's state on the shared homeserver.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.config import AppserviceConfig
from tests.support.issuer import TestIssuer, obtain_token, start_issuer
from tests.support.net import free_port
from tests.support.stack import SERVER_NAME, bridge_config, new_appservice, write_registration
from tests.support.synapse import SynapseServer, start_synapse

BridgeClient = TestClient[web.Request, web.Application]


@pytest.fixture(scope="session")
def issuer() -> Iterator[TestIssuer]:
    running = start_issuer()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def appservice() -> AppserviceConfig:
    return new_appservice()


@pytest.fixture(scope="session")
def synapse(
    tmp_path_factory: pytest.TempPathFactory, appservice: AppserviceConfig
) -> Iterator[SynapseServer]:
    workdir = tmp_path_factory.mktemp("synapse")
    reg = write_registration(appservice, workdir / "bridge-registration.yaml")
    server = start_synapse(
        workdir=workdir, registration_files=[reg], server_name=SERVER_NAME, port=free_port()
    )
    yield server
    server.stop()


MakeBridge = Callable[..., Awaitable[BridgeClient]]


@pytest.fixture
def make_bridge(
    aiohttp_client: Callable[[web.Application], Awaitable[BridgeClient]],
    synapse: SynapseServer,
    appservice: AppserviceConfig,
    issuer: TestIssuer,
) -> MakeBridge:
    """A bridge in front of the session's Synapse, on a given issuer (default: the session's)."""

    async def make(on_issuer: TestIssuer | None = None, **extra: object) -> BridgeClient:
        config = bridge_config(
            issuer=on_issuer or issuer,
            homeserver_url=synapse.base_url,
            appservice=appservice,
            **extra,
        )
        return await aiohttp_client(create_app(config))

    return make


@pytest.fixture
async def bridge(make_bridge: MakeBridge) -> BridgeClient:
    return await make_bridge()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session, as a Matrix client's HTTP stack."""
    async with aiohttp.ClientSession() as session:
        yield session


Login = Callable[..., Awaitable[str]]


@pytest.fixture
def login(http: aiohttp.ClientSession, issuer: TestIssuer) -> Login:
    """Log a user in at the issuer (authorization code + PKCE); return the access token."""

    async def do_login(
        username: str,
        device_id: str,
        *,
        on_issuer: TestIssuer | None = None,
        unstable: bool = False,
    ) -> str:
        tokens = await obtain_token(
            http,
            (on_issuer or issuer).url,
            username=username,
            device_id=device_id,
            unstable_scopes=unstable,
        )
        return tokens.access_token

    return do_login


def new_localpart(name: str) -> str:
    """A localpart no other test uses."""
    return f"{name}-{secrets.token_hex(4)}"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def synapse_admin(
    synapse: SynapseServer, http: aiohttp.ClientSession
) -> Callable[..., Awaitable[dict[str, object]]]:
    """GET a Synapse admin API path directly (not through the bridge), as its admin."""

    async def get(path: str) -> dict[str, object]:
        async with http.get(synapse.base_url + path, headers=auth(synapse.admin_token)) as resp:
            body: dict[str, object] = await resp.json()
            body["_status"] = resp.status
            return body

    return get
