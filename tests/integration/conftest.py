"""The real test stack: one Synapse, one Dendrite (when a test needs it) and one
oidc-provider issuer for the session.

Tests create their own users (random localparts), so they never see each
other's state on the shared homeservers. ``stack`` runs a test once per
(homeserver, strategy) pair that works.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.config import AppserviceConfig, Strategy
from tests.support.dendrite import DendriteServer, start_dendrite
from tests.support.issuer import TestIssuer, obtain_token, start_issuer
from tests.support.net import free_port, wait_http
from tests.support.serve import ROOT, Bridge
from tests.support.stack import (
    SERVER_NAME,
    bridge_config,
    new_appservice,
    new_plain_login_appservice,
    write_plain_login_registration,
    write_registration,
)
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
def plain_login_appservice() -> AppserviceConfig:
    """The test-only second appservice (no MSC4190) that logs users in with plain tokens."""
    return new_plain_login_appservice()


@pytest.fixture(scope="session")
def device_login_appservice() -> AppserviceConfig:
    """The appservice of bridges with the device_login strategy (no MSC4190 on Synapse)."""
    return new_appservice("matrix-oidc-bridge-dl", "oidc-bridge-dl")


@pytest.fixture(scope="session")
def synapse(
    tmp_path_factory: pytest.TempPathFactory,
    appservice: AppserviceConfig,
    device_login_appservice: AppserviceConfig,
    plain_login_appservice: AppserviceConfig,
) -> Iterator[SynapseServer]:
    """One Synapse with three registrations: the masquerade bridge's (MSC4190), the
    device_login bridge's (without), and the test-only plain-login appservice."""
    workdir = tmp_path_factory.mktemp("synapse")
    reg = write_registration(appservice, workdir / "bridge-registration.yaml")
    dl_reg = write_registration(
        device_login_appservice, workdir / "bridge-dl-registration.yaml", strategy="device_login"
    )
    plain = write_plain_login_registration(
        plain_login_appservice, workdir / "plain-login-registration.yaml"
    )
    server = start_synapse(
        workdir=workdir,
        registration_files=[reg, dl_reg, plain],
        server_name=SERVER_NAME,
        port=free_port(),
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dendrite(
    tmp_path_factory: pytest.TempPathFactory, device_login_appservice: AppserviceConfig
) -> Iterator[DendriteServer]:
    """Dendrite 0.13.8 with the device_login bridge's registration (started on first use)."""
    workdir = tmp_path_factory.mktemp("dendrite")
    reg = write_registration(
        device_login_appservice, workdir / "bridge-registration.yaml", strategy="device_login"
    )
    server = start_dendrite(workdir=workdir, registration_files=[reg], server_name=SERVER_NAME)
    yield server
    server.stop()


@dataclass
class Stack:
    """A homeserver, the strategy the bridge uses on it, and that bridge."""

    homeserver: HomeserverKind
    strategy: Strategy
    base_url: str
    admin_token: str
    appservice: AppserviceConfig
    bridge: BridgeClient


HomeserverKind = Literal["synapse", "dendrite"]
# Every (homeserver, strategy) pair that works: Dendrite cannot masquerade.
STACKS: list[tuple[HomeserverKind, Strategy]] = [
    ("synapse", "masquerade"),
    ("synapse", "device_login"),
    ("dendrite", "device_login"),
]


@pytest.fixture(params=STACKS, ids=[f"{h}-{s}" for h, s in STACKS])
async def stack(
    request: pytest.FixtureRequest,
    aiohttp_client: Callable[[web.Application], Awaitable[BridgeClient]],
    issuer: TestIssuer,
    tmp_path: Path,
) -> Stack:
    """A bridge in front of each homeserver with each strategy that works there."""
    kind, strategy = request.param
    server: SynapseServer | DendriteServer = request.getfixturevalue(kind)
    appservice: AppserviceConfig = request.getfixturevalue(
        "appservice" if strategy == "masquerade" else "device_login_appservice"
    )
    config = bridge_config(
        issuer=issuer,
        homeserver_url=server.base_url,
        appservice=appservice,
        strategy=strategy,
        store_path=tmp_path / "bridge.db" if strategy == "device_login" else None,
    )
    bridge = await aiohttp_client(create_app(config))
    return Stack(kind, strategy, server.base_url, server.admin_token, appservice, bridge)


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


Serve = Callable[..., Bridge]


@pytest.fixture
def serve(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> Serve:
    """``python -m bridge serve`` of a config document in its own process, returned once
    it answers (blocking: call it through ``asyncio.to_thread`` from a test)."""

    def start(document: dict[str, Any], env: dict[str, str] | None = None) -> Bridge:
        bridge = Bridge(tmp_path, document, processes)
        process = bridge.start(env)
        wait_http(
            bridge.base + "/.well-known/matrix/client", is_alive=lambda: process.poll() is None
        )
        return bridge

    return start


@dataclass
class Served:
    """A bridge process listening on ``base``."""

    base: str
    log_path: Path
    process: subprocess.Popen[bytes]

    def wait_ready(self) -> None:
        try:
            wait_http(
                self.base + "/.well-known/matrix/client",
                timeout=30,
                is_alive=lambda: self.process.poll() is None,
            )
        except Exception as exc:
            log = self.log_path.read_text(encoding="utf-8", errors="replace")
            raise RuntimeError(f"bridge at {self.base} did not start: {exc}\n{log}") from exc


class StartServe(Protocol):
    def __call__(
        self, name: str, document: dict[str, object], port: int, *, code: str | None = ...
    ) -> Served: ...


@pytest.fixture
def start_serve(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> StartServe:
    """Start ``serve`` processes named ``name`` (not waiting for them): ``python -m
    bridge``, or ``python -c code`` (a patched bridge); all are killed at the end."""

    def start(
        name: str, document: dict[str, object], port: int, *, code: str | None = None
    ) -> Served:
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump(document), encoding="utf-8")
        log_path = tmp_path / f"{name}.log"
        head = ["-c", code] if code is not None else ["-m", "bridge"]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, *head, "serve", "-c", str(config)],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"PATH": "/usr/bin:/bin"},
            )
        processes.append(process)
        return Served(f"http://127.0.0.1:{port}", log_path, process)

    return start


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


PlainLogin = Callable[[str, str], Awaitable[str]]


@pytest.fixture
def plain_login(
    http: aiohttp.ClientSession, synapse: SynapseServer, plain_login_appservice: AppserviceConfig
) -> PlainLogin:
    """A plain Synapse access token for (localpart, device_id), straight from Synapse.

    The user is registered through the test-only second appservice if needed, then
    logged in with ``m.login.application_service``: the token is an ordinary device
    token, and requests made with it are not appservice requests.
    """
    v3 = synapse.base_url + "/_matrix/client/v3"
    as_auth = auth(plain_login_appservice.as_token)

    async def do_login(localpart: str, device_id: str) -> str:
        registration = {
            "type": "m.login.application_service",
            "username": localpart,
            "inhibit_login": True,
        }
        async with http.post(f"{v3}/register", json=registration, headers=as_auth) as resp:
            answer = await resp.json()
            if resp.status != 200 and answer.get("errcode") != "M_USER_IN_USE":
                raise RuntimeError(f"register {localpart}: {resp.status} {answer}")
        login = {
            "type": "m.login.application_service",
            "identifier": {"type": "m.id.user", "user": localpart},
            "device_id": device_id,
        }
        async with http.post(f"{v3}/login", json=login, headers=as_auth) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"login {localpart}/{device_id}: {resp.status} {answer}")
            return str(answer["access_token"])

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


# The login layer's bridges (tests/integration/login_stack.py).
from tests.integration.login_stack import make_login_bridge  # noqa: E402, F401
