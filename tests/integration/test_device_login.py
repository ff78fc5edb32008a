"""``device_login`` against real homeservers, and the start-up probe that chooses it.

- Two ``serve`` processes on one PostgreSQL store log a device in exactly once,
  however their first requests race (and, as a control, twice without the
  store's login lock).
- The homeserver token never lies in clear in the store's files or rows.
- A device or a whole database the homeserver lost is provisioned again on
  the next request (both strategies for the wiped database).
- ``probe`` reports what each homeserver and registration allows, and
  ``serve`` refuses to start with a strategy that cannot work.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
import pytest
import yaml
from aiohttp import web
from cryptography.fernet import Fernet

from bridge.app import create_app
from bridge.config import AppserviceConfig, BridgeConfig, Strategy, parse_config
from bridge.store import open_store
from tests.integration.conftest import (
    BridgeClient,
    Login,
    Served,
    StartServe,
    auth,
    new_localpart,
)
from tests.support.dendrite import DendriteServer
from tests.support.issuer import TestIssuer
from tests.support.net import free_port
from tests.support.postgres import PostgresServer, find_binary
from tests.support.stack import (
    SERVER_NAME,
    bridge_config,
    bridge_config_document,
    served_bridge_document,
    write_registration,
)
from tests.support.synapse import SynapseServer, start_synapse

V3 = "/_matrix/client/v3"
WHOAMI = f"{V3}/account/whoami"
REPO_ROOT = Path(__file__).resolve().parents[2]
EXIT_CONFIG = 11
# What the bridge's processes inherit: no proxy settings, no log level of the runner's.
CHILD_ENV = {"PATH": "/usr/bin:/bin"}

AiohttpClient = Callable[[web.Application], Awaitable[BridgeClient]]


def user_id_of(localpart: str) -> str:
    return f"@{localpart}:{SERVER_NAME}"


async def new_postgres_store(server: PostgresServer) -> dict[str, object]:
    """The ``store`` section of a fresh database on the session's PostgreSQL."""
    database = f"bridge_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(server.dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    return {
        "kind": "postgres",
        "dsn": server.dsn_for(database),
        "encryption_keys": [Fernet.generate_key().decode()],
    }


async def stored_token(config: BridgeConfig, localpart: str, device_id: str) -> str:
    """The homeserver token the bridge keeps for the device, read as the bridge reads it."""
    assert config.store is not None
    store = await open_store(config.store)
    try:
        token = await store.device_token(user_id_of(localpart), device_id)
    finally:
        await store.close()
    assert token is not None, "the bridge kept no token for the device"
    return token


async def direct_whoami(
    http: aiohttp.ClientSession, base_url: str, token: str
) -> tuple[int, dict[str, Any]]:
    """``whoami`` straight at the homeserver, with a homeserver token."""
    async with http.get(base_url + WHOAMI, headers=auth(token)) as resp:
        body: dict[str, Any] = await resp.json()
        return resp.status, body


async def synapse_device_ids(
    http: aiohttp.ClientSession, synapse: SynapseServer, localpart: str
) -> list[str]:
    """The user's devices, as Synapse's admin API lists them."""
    user = quote(user_id_of(localpart))
    async with http.get(
        f"{synapse.base_url}/_synapse/admin/v2/users/{user}/devices",
        headers=auth(synapse.admin_token),
    ) as resp:
        assert resp.status == 200, await resp.text()
        return sorted(d["device_id"] for d in (await resp.json())["devices"])


def synapse_tokens(synapse: SynapseServer, user_id: str, device_id: str) -> list[str]:
    """Every access token Synapse holds for the device, read from its own database file."""
    path = synapse.workdir / "homeserver.db"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT token FROM access_tokens WHERE user_id = ? AND device_id = ?",
            (user_id, device_id),
        ).fetchall()
    finally:
        conn.close()
    return [str(row[0]) for row in rows]


# ---------------------------------------------------------------------------
# Bridge processes (``python -m bridge serve``)
# ---------------------------------------------------------------------------

# ``serve`` exactly as ``python -m bridge`` runs it, but with PostgresStore's
# login lock replaced by a block that locks nothing: the control experiment
# that shows the race test below detects a missing lock.
WITHOUT_LOGIN_LOCK = """\
import contextlib, sys
from bridge.store.postgres import PostgresStore

@contextlib.asynccontextmanager
async def no_lock(self, user_id, device_id):
    yield

PostgresStore.login_lock = no_lock
from bridge.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


async def first_requests_on_two_instances(
    *,
    start_serve: StartServe,
    postgres_server: PostgresServer,
    issuer: TestIssuer,
    synapse: SynapseServer,
    device_login_appservice: AppserviceConfig,
    login: Login,
    http: aiohttp.ClientSession,
    without_login_lock: bool = False,
) -> tuple[BridgeConfig, str, list[str]]:
    """Two bridge processes on one PostgreSQL store; one OAuth session's first requests
    go to both at the same moment. Returns the processes' config, the session's
    localpart and the access tokens Synapse then holds for its device."""
    store = await new_postgres_store(postgres_server)
    served: list[Served] = []
    for name in ("one", "two"):
        port = free_port()
        document = served_bridge_document(
            issuer=issuer,
            homeserver_url=synapse.base_url,
            appservice=device_login_appservice,
            port=port,
            strategy="device_login",
            store=store,
        )
        code = WITHOUT_LOGIN_LOCK if without_login_lock else None
        served.append(start_serve(name, document, port, code=code))
    await asyncio.gather(*(asyncio.to_thread(s.wait_ready) for s in served))

    alice = new_localpart("alice")
    token = await login(alice, "DEVRACE")
    go = asyncio.Event()

    async def whoami(base: str) -> tuple[int, dict[str, Any]]:
        await go.wait()
        async with http.get(base + WHOAMI, headers=auth(token)) as resp:
            return resp.status, await resp.json()

    # Interleaved, so both processes see their first requests together.
    tasks = [asyncio.create_task(whoami(s.base)) for _ in range(10) for s in served]
    await asyncio.sleep(0.05)  # every task is waiting on the event
    go.set()
    answers = await asyncio.gather(*tasks)
    for status, body in answers:
        assert status == 200, body
        assert body["user_id"] == user_id_of(alice)
        assert body["device_id"] == "DEVRACE"
    config = parse_config(document)
    return config, alice, synapse_tokens(synapse, user_id_of(alice), "DEVRACE")


async def test_two_instances_on_one_postgres_log_a_device_in_once(
    start_serve: StartServe,
    postgres_server: PostgresServer,
    issuer: TestIssuer,
    synapse: SynapseServer,
    device_login_appservice: AppserviceConfig,
    login: Login,
    http: aiohttp.ClientSession,
) -> None:
    config, alice, tokens = await first_requests_on_two_instances(
        start_serve=start_serve,
        postgres_server=postgres_server,
        issuer=issuer,
        synapse=synapse,
        device_login_appservice=device_login_appservice,
        login=login,
        http=http,
    )
    # Synapse keeps every token a login hands out (logging the same device in again
    # does not end the previous one): one row is one homeserver login.
    assert len(tokens) == 1, tokens
    # ... and it is the token both instances share through the store.
    assert await stored_token(config, alice, "DEVRACE") == tokens[0]
    status, body = await direct_whoami(http, synapse.base_url, tokens[0])
    assert (status, body.get("user_id"), body.get("device_id")) == (
        200,
        user_id_of(alice),
        "DEVRACE",
    )


async def test_without_the_login_lock_both_instances_log_the_device_in(
    start_serve: StartServe,
    postgres_server: PostgresServer,
    issuer: TestIssuer,
    synapse: SynapseServer,
    device_login_appservice: AppserviceConfig,
    login: Login,
    http: aiohttp.ClientSession,
) -> None:
    """The control: the same race, with the lock taken out of both processes. Each
    process still logs in at most once (its requests share one flight), so exactly
    two logins show that the first requests of both really overlapped, and that the
    test above would catch a missing or broken lock."""
    _, _, tokens = await first_requests_on_two_instances(
        start_serve=start_serve,
        postgres_server=postgres_server,
        issuer=issuer,
        synapse=synapse,
        device_login_appservice=device_login_appservice,
        login=login,
        http=http,
        without_login_lock=True,
    )
    assert len(tokens) == 2, tokens


# ---------------------------------------------------------------------------
# No homeserver token in clear at rest
# ---------------------------------------------------------------------------


async def use_device_login_bridge(bridge: BridgeClient, login: Login) -> tuple[str, str]:
    """A few requests of a new user through ``bridge``; returns (localpart, device_id)."""
    bob = new_localpart("bob")
    token = await login(bob, "DEVREST")
    resp = await bridge.post(f"{V3}/createRoom", headers=auth(token), json={})
    assert resp.status == 200, await resp.text()
    for _ in range(3):
        resp = await bridge.get(WHOAMI, headers=auth(token))
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["device_id"] == "DEVREST"
    return bob, "DEVREST"


async def live_homeserver_token(
    config: BridgeConfig, localpart: str, device_id: str, http: aiohttp.ClientSession, base: str
) -> bytes:
    """The kept token, checked to be the device's live homeserver token (so that not
    finding it proves something)."""
    token = await stored_token(config, localpart, device_id)
    status, body = await direct_whoami(http, base, token)
    assert (status, body.get("device_id")) == (200, device_id), body
    return token.encode()


def sqlite_files(path: Path) -> bytes:
    """The database file and its WAL and shared-memory files, as they lie on disk."""
    return b"".join(
        candidate.read_bytes()
        for candidate in (
            path,
            path.with_name(path.name + "-wal"),
            path.with_name(path.name + "-shm"),
        )
        if candidate.exists()
    )


async def test_sqlite_store_holds_no_token_in_clear(
    aiohttp_client: AiohttpClient,
    issuer: TestIssuer,
    synapse: SynapseServer,
    device_login_appservice: AppserviceConfig,
    login: Login,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    path = tmp_path / "bridge.db"
    config = bridge_config(
        issuer=issuer,
        homeserver_url=synapse.base_url,
        appservice=device_login_appservice,
        strategy="device_login",
        store_path=path,
    )
    bridge = await aiohttp_client(create_app(config))
    bob, device_id = await use_device_login_bridge(bridge, login)
    token = await live_homeserver_token(config, bob, device_id, http, synapse.base_url)

    # While the bridge runs (the row may still be in the WAL) and after it stopped
    # (checkpointed into the main file). The user ID is stored in clear, so finding
    # it shows the bytes searched hold the row.
    running = await asyncio.to_thread(sqlite_files, path)
    await bridge.close()
    stopped = await asyncio.to_thread(sqlite_files, path)
    for data in (running, stopped):
        assert user_id_of(bob).encode() in data
        assert token not in data


def pg_dump(dsn: str) -> bytes:
    """Every row of the database, as ``pg_dump`` writes it."""
    result = subprocess.run(
        [str(find_binary("pg_dump")), "--dbname", dsn],
        capture_output=True,
        timeout=60,
        check=True,
        env=CHILD_ENV,
    )
    return result.stdout


async def rows_as_text(dsn: str) -> bytes:
    """Every row of every table of the database, as JSON text."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) FROM"
            " information_schema.tables WHERE table_type = 'BASE TABLE'"
            " AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        assert len(tables) >= 2, tables  # device_tokens and the schema's own
        rows = []
        for (table,) in tables:
            # The names come from the catalogue, quoted by quote_ident().
            query = f"SELECT row_to_json(t)::text FROM {table} t"  # noqa: S608
            rows += await conn.fetch(query)
    finally:
        await conn.close()
    return "\n".join(str(row[0]) for row in rows).encode()


async def test_postgres_store_holds_no_token_in_clear(
    aiohttp_client: AiohttpClient,
    postgres_server: PostgresServer,
    issuer: TestIssuer,
    synapse: SynapseServer,
    device_login_appservice: AppserviceConfig,
    login: Login,
    http: aiohttp.ClientSession,
) -> None:
    store = await new_postgres_store(postgres_server)
    config = bridge_config(
        issuer=issuer,
        homeserver_url=synapse.base_url,
        appservice=device_login_appservice,
        strategy="device_login",
        store=store,
    )
    bridge = await aiohttp_client(create_app(config))
    bob, device_id = await use_device_login_bridge(bridge, login)
    token = await live_homeserver_token(config, bob, device_id, http, synapse.base_url)

    dsn = str(store["dsn"])
    for data in (await asyncio.to_thread(pg_dump, dsn), await rows_as_text(dsn)):
        assert user_id_of(bob).encode() in data  # the row is in what was searched
        assert token not in data


# ---------------------------------------------------------------------------
# Self-healing
# ---------------------------------------------------------------------------


@dataclass
class DeviceLoginBridge:
    homeserver: SynapseServer | DendriteServer
    config: BridgeConfig
    client: BridgeClient


@pytest.fixture(params=["synapse", "dendrite"])
async def device_login_bridge(
    request: pytest.FixtureRequest,
    aiohttp_client: AiohttpClient,
    issuer: TestIssuer,
    device_login_appservice: AppserviceConfig,
    tmp_path: Path,
) -> DeviceLoginBridge:
    """A device_login bridge (SQLite store) in front of the session's Synapse or Dendrite."""
    server: SynapseServer | DendriteServer = request.getfixturevalue(request.param)
    config = bridge_config(
        issuer=issuer,
        homeserver_url=server.base_url,
        appservice=device_login_appservice,
        strategy="device_login",
        store_path=tmp_path / "bridge.db",
    )
    return DeviceLoginBridge(server, config, await aiohttp_client(create_app(config)))


async def test_device_deleted_on_the_homeserver_is_logged_in_again(
    device_login_bridge: DeviceLoginBridge, login: Login, http: aiohttp.ClientSession
) -> None:
    """How the device goes: on Synapse an admin deletes it (admin API). Dendrite 0.13.8
    has no admin API for devices, and ``DELETE /devices/{id}`` wants interactive auth
    with a password these users do not have; what can end the device there is its own
    token, so the test logs the token the bridge kept out (as anyone holding it, or a
    session-ending tool working from the bridge's store, could)."""
    server, client = device_login_bridge.homeserver, device_login_bridge.client
    carol = new_localpart("carol")
    token = await login(carol, "DEVHEAL")
    resp = await client.get(WHOAMI, headers=auth(token))
    assert resp.status == 200, await resp.text()
    kept = await stored_token(device_login_bridge.config, carol, "DEVHEAL")

    if isinstance(server, SynapseServer):
        user = quote(user_id_of(carol))
        async with http.delete(
            f"{server.base_url}/_synapse/admin/v2/users/{user}/devices/DEVHEAL",
            headers=auth(server.admin_token),
        ) as deleted:
            assert deleted.status == 200, await deleted.text()
    else:
        async with http.post(f"{server.base_url}{V3}/logout", headers=auth(kept), json={}) as out:
            assert out.status == 200, await out.text()
    status, body = await direct_whoami(http, server.base_url, kept)
    assert (status, body.get("errcode")) == (401, "M_UNKNOWN_TOKEN")

    # The bridge still holds the dead token in memory, and heals on the next request.
    resp = await client.get(WHOAMI, headers=auth(token))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["device_id"] == "DEVHEAL"

    renewed = await stored_token(device_login_bridge.config, carol, "DEVHEAL")
    assert renewed != kept
    status, body = await direct_whoami(http, server.base_url, renewed)
    assert (status, body.get("user_id"), body.get("device_id")) == (
        200,
        user_id_of(carol),
        "DEVHEAL",
    )
    if isinstance(server, SynapseServer):
        assert await synapse_device_ids(http, server, carol) == ["DEVHEAL"]


@pytest.fixture
def own_synapse(
    tmp_path: Path, appservice: AppserviceConfig, device_login_appservice: AppserviceConfig
) -> Iterator[SynapseServer]:
    """A Synapse of this test's own (it gets wiped), with the registrations of both
    strategies."""
    workdir = tmp_path / "synapse"
    workdir.mkdir()
    server = start_synapse(
        workdir=workdir,
        registration_files=[
            write_registration(appservice, workdir / "bridge-registration.yaml"),
            write_registration(
                device_login_appservice,
                workdir / "bridge-dl-registration.yaml",
                strategy="device_login",
            ),
        ],
        server_name=SERVER_NAME,
        port=free_port(),
    )
    yield server
    server.stop()


async def test_wiped_and_restarted_homeserver_is_provisioned_again(
    own_synapse: SynapseServer,
    aiohttp_client: AiohttpClient,
    issuer: TestIssuer,
    appservice: AppserviceConfig,
    device_login_appservice: AppserviceConfig,
    login: Login,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """The homeserver comes back from an empty database (a lost disk, a bad restore):
    every user, device and token the bridges provisioned is gone. Each bridge notices
    on its next request (masquerade: "not registered"; device_login: unknown token)
    and provisions again at once, without waiting for any cache to expire."""
    strategies: list[tuple[Strategy, AppserviceConfig]] = [
        ("masquerade", appservice),
        ("device_login", device_login_appservice),
    ]
    sessions: list[tuple[Strategy, BridgeClient, str, str]] = []
    for strategy, service in strategies:
        config = bridge_config(
            issuer=issuer,
            homeserver_url=own_synapse.base_url,
            appservice=service,
            strategy=strategy,
            store_path=tmp_path / "bridge.db" if strategy == "device_login" else None,
        )
        client = await aiohttp_client(create_app(config))
        localpart = new_localpart(f"dave-{strategy.replace('_', '-')}")
        sessions.append((strategy, client, localpart, await login(localpart, "DEVWIPE")))

    async def whoami_through_each() -> None:
        for strategy, client, localpart, token in sessions:
            resp = await client.get(WHOAMI, headers=auth(token))
            assert resp.status == 200, (strategy, await resp.text())
            body = await resp.json()
            assert (body["user_id"], body["device_id"]) == (user_id_of(localpart), "DEVWIPE")
            assert await synapse_device_ids(http, own_synapse, localpart) == ["DEVWIPE"]

    await whoami_through_each()
    await asyncio.to_thread(own_synapse.restart, wipe=True)
    for _, _, localpart, _ in sessions:
        user = quote(user_id_of(localpart))
        async with http.get(
            f"{own_synapse.base_url}/_synapse/admin/v2/users/{user}",
            headers=auth(own_synapse.admin_token),
        ) as resp:
            assert resp.status == 404, "the wipe left the user behind"

    started = time.monotonic()
    await whoami_through_each()
    assert time.monotonic() - started < 10


# ---------------------------------------------------------------------------
# The start-up probe
# ---------------------------------------------------------------------------


def write_config(
    path: Path,
    *,
    issuer: TestIssuer,
    homeserver_url: str,
    appservice: AppserviceConfig,
    strategy: Strategy,
    port: int | None = None,
) -> Path:
    """The config file of a bridge with ``strategy`` (listening on ``port`` if given)."""
    document = bridge_config_document(
        issuer=issuer,
        homeserver_url=homeserver_url,
        appservice=appservice,
        strategy=strategy,
        store_path=path.with_suffix(".db") if strategy == "device_login" else None,
    )
    if port is not None:
        document["listen"] = {"host": "127.0.0.1", "port": port}
    parse_config(document)  # a mistake here must not pass as a refusal
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def run_bridge(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=CHILD_ENV,
        check=False,
    )


@dataclass(frozen=True)
class ProbeCase:
    homeserver: str
    registration: str  # the appservice fixture whose registration the homeserver loaded
    strategy: Strategy
    login: bool
    creation: bool
    masquerading: bool

    @property
    def works(self) -> list[str]:
        found = ["device_login"] if self.login else []
        return found + (["masquerade"] if self.creation and self.masquerading else [])


PROBES = [
    # Dendrite 0.13.8: appservice login with a device_id, no MSC4190, no MSC4326.
    ProbeCase("dendrite", "device_login_appservice", "device_login", True, False, False),
    ProbeCase("dendrite", "device_login_appservice", "masquerade", True, False, False),
    # Synapse, registration with io.element.msc4190: devices by PUT, no appservice login.
    ProbeCase("synapse", "appservice", "masquerade", False, True, True),
    ProbeCase("synapse", "appservice", "device_login", False, True, True),
    # Synapse, registration without the flag: appservice login works, and Synapse
    # (1.163) lets any appservice create devices with PUT /devices and masquerade
    # as them, whatever the flag says, so masquerade is possible here too.
    ProbeCase("synapse", "device_login_appservice", "device_login", True, True, True),
]


@pytest.mark.parametrize(
    "case", PROBES, ids=[f"{c.homeserver}-{c.registration}-{c.strategy}" for c in PROBES]
)
def test_probe_reports_what_the_homeserver_allows(
    case: ProbeCase, request: pytest.FixtureRequest, issuer: TestIssuer, tmp_path: Path
) -> None:
    server: SynapseServer | DendriteServer = request.getfixturevalue(case.homeserver)
    config = write_config(
        tmp_path / "bridge.yaml",
        issuer=issuer,
        homeserver_url=server.base_url,
        appservice=request.getfixturevalue(case.registration),
        strategy=case.strategy,
    )
    result = run_bridge("probe", "-c", str(config))

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"homeserver {server.base_url} (spec versions "), result
    assert lines[1:5] == [
        f"  appservice login with a device_id: {yes(case.login)}",
        f"  appservice device creation (MSC4190): {yes(case.creation)}",
        f"  device masquerading (MSC4326): {yes(case.masquerading)}",
        f"strategies that work: {', '.join(case.works) or 'none'}",
    ], result
    if case.strategy in case.works:
        assert result.returncode == 0, result
        assert len(lines) == 5, result
    else:
        assert result.returncode == EXIT_CONFIG, result
        assert lines[5:] == [
            f"the configured strategy {case.strategy} cannot work: "
            + (
                "the homeserver refuses appservice login with a device_id "
                "(on Synapse: remove io.element.msc4190 from the registration)"
                if case.strategy == "device_login"
                else "the homeserver lacks appservice device creation (MSC4190: PUT "
                "/devices/{id}?user_id=) and device masquerading (MSC4326: ?device_id= "
                "is not honoured)"
            )
        ], result


def test_probe_names_an_as_token_the_homeserver_refuses(
    synapse: SynapseServer, issuer: TestIssuer, appservice: AppserviceConfig, tmp_path: Path
) -> None:
    # /versions is public, but Synapse refuses a wrong token even there (401): the
    # probe must ask it without the as_token, so as to name the as_token itself.
    wrong = appservice.model_copy(update={"as_token": "not-the-as-token"})
    config = write_config(
        tmp_path / "bridge.yaml",
        issuer=issuer,
        homeserver_url=synapse.base_url,
        appservice=wrong,
        strategy="masquerade",
    )
    result = run_bridge("probe", "-c", str(config))
    assert result.returncode == 1, result
    assert "does not accept the bridge's as_token" in result.stderr, result
    assert "is the registration loaded?" in result.stderr, result
    assert "not-the-as-token" not in result.stdout + result.stderr


def test_serve_refuses_masquerade_in_front_of_dendrite(
    dendrite: DendriteServer,
    issuer: TestIssuer,
    device_login_appservice: AppserviceConfig,
    tmp_path: Path,
) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "bridge.yaml",
        issuer=issuer,
        homeserver_url=dendrite.base_url,
        appservice=device_login_appservice,
        strategy="masquerade",
        port=port,
    )
    started = time.monotonic()
    result = run_bridge("serve", "-c", str(config), timeout=20)
    assert time.monotonic() - started < 10, result
    assert result.returncode == EXIT_CONFIG, result
    stderr = result.stderr
    assert "config error: homeserver.strategy" in stderr, stderr
    assert f"masquerade cannot work with {dendrite.base_url}" in stderr, stderr
    assert "MSC4190" in stderr, stderr
    assert "MSC4326" in stderr, stderr
