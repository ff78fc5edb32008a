"""``listen.workers``: processes sharing one port (SO_REUSEPORT), supervised by the main one.

Real ``python -m bridge serve`` processes on 127.0.0.1, in front of the fake issuer and
homeserver (served by this test's event loop). Which process served a request is read
from the access log: with several workers, every log line names its process.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.fernet import Fernet
from pytest_aiohttp import AiohttpServer

from bridge.config import load_config
from bridge.runtime.workers import Supervisor
from bridge.store import open_store
from tests.fakes import (
    SERVER_NAME,
    FakeHomeserver,
    FakeIssuer,
    active_claims,
    bridge_document,
    free_port,
)
from tests.support.serve import Bridge, children, until

TOKEN = "oauth-token-for-alice"
WHOAMI = "/_matrix/client/v3/account/whoami"
INFO = {"BRIDGE_LOG_LEVEL": "INFO"}


def _document(issuer_url: str, homeserver_url: str, port: int, workers: int) -> dict[str, Any]:
    listen = {"host": "127.0.0.1", "port": port, "workers": workers}
    return bridge_document(issuer_url, homeserver_url, {"listen": listen})


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_text().split("\0")


def _exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


class Served(Bridge):
    """A ``serve`` process, its workers named in its log."""

    def children(self) -> set[int]:
        return children(self.process.pid)

    def ready(self) -> list[int]:
        """The workers that said they were ready, in order (pids)."""
        return [int(pid) for pid in re.findall(r"worker \d+ \(pid (\d+)\) ready", self.log())]

    def served(self, path: str = WHOAMI) -> list[int]:
        """The process of each request for ``path`` answered 200, from the access log."""
        pattern = rf"\[(\d+)\] bridge\.access \S+ GET {re.escape(path)} 200 "
        return [int(pid) for pid in re.findall(pattern, self.log())]


Start = Callable[..., Awaitable[Served]]


@pytest.fixture
async def issuer(aiohttp_server: AiohttpServer) -> FakeIssuer:
    issuer = await FakeIssuer.start(aiohttp_server)
    issuer.tokens[TOKEN] = active_claims("alice", "DEVA")
    return issuer


@pytest.fixture
def start(
    tmp_path: Path,
    issuer: FakeIssuer,
    homeserver: FakeHomeserver,
    processes: list[subprocess.Popen[bytes]],
) -> Start:
    """Start ``serve`` with ``workers`` and wait until every worker is ready."""

    async def start(workers: int) -> Served:
        document = _document(issuer.url, homeserver.url, free_port(), workers)
        served = Served(tmp_path, document, processes)
        served.start(INFO)

        def up() -> bool:
            if served.process.poll() is not None:
                raise AssertionError(f"serve exited early:\n{served.log()}")
            if workers > 1:
                return len(served.ready()) == workers
            return served.accepts()

        await until(up, "ready")
        return served

    return start


async def _whoami(served: Served, count: int) -> None:
    """``count`` requests, each on a connection of its own (so the kernel picks a
    worker for each), all answered 200."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for _ in range(count):
            async with session.get(
                served.base + WHOAMI, headers={"Authorization": f"Bearer {TOKEN}"}
            ) as resp:
                assert resp.status == 200, await resp.text()


async def test_two_workers_serve_the_port(start: Start, issuer: FakeIssuer) -> None:
    served = await start(workers=2)
    workers = served.children()
    assert len(workers) == 2
    assert set(served.ready()) == workers  # the main process serves nothing
    for pid in workers:
        assert "--worker" in _cmdline(pid)

    await _whoami(served, 40)
    # Both workers answered (the chance that 40 connections all go to one is 2**-39).
    await until(lambda: len(served.served()) == 40, "40 requests in the access log")
    assert set(served.served()) == workers
    # Each worker has a token cache of its own: each asked the issuer once.
    assert len(issuer.introspections) == 2


async def test_a_killed_worker_is_replaced(start: Start) -> None:
    served = await start(workers=2)
    killed, kept = sorted(served.children())
    os.kill(killed, signal.SIGKILL)

    await until(lambda: len(served.ready()) == 3, "a new worker ready")
    new = served.ready()[-1]
    assert new not in (killed, kept)
    assert served.children() == {kept, new}
    assert f"(pid {killed}) was killed by SIGKILL; starting it again in 0.5s" in served.log()
    assert served.process.poll() is None

    await _whoami(served, 30)
    await until(lambda: len(served.served()) == 30, "30 requests in the access log")
    assert set(served.served()) == {kept, new}


async def test_sigterm_drains_requests_in_flight(start: Start, homeserver: FakeHomeserver) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow(_request: web.Request) -> web.StreamResponse:
        arrived.set()
        await release.wait()
        return web.json_response({"user_id": f"@alice:{SERVER_NAME}"})

    homeserver.answer = slow
    served = await start(workers=2)
    workers = served.children()

    async def ask() -> tuple[int, object]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(served.base + WHOAMI, headers={"Authorization": f"Bearer {TOKEN}"}) as resp,
        ):
            return resp.status, await resp.json()

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", served.port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    request = asyncio.create_task(ask())
    try:
        await asyncio.wait_for(arrived.wait(), 10)
        served.process.send_signal(signal.SIGTERM)
        # Draining: no new connections; the idle worker is gone, the busy one waits.
        await until(refused, "the port closed")
        await until(lambda: len(served.children()) == 1, "the idle worker gone")
        await asyncio.sleep(0.5)
        assert served.process.poll() is None
        assert not request.done()

        release.set()
        assert await request == (200, {"user_id": f"@alice:{SERVER_NAME}"})
    finally:
        request.cancel()

    assert await served.wait() == 0
    logged = served.log()
    assert "SIGTERM: stopping the workers" in logged
    for pid in workers:
        assert f"(pid {pid}) exited with code 0" in logged
        assert not _exists(pid)
    assert served.served() != []


async def test_one_worker_is_one_process(start: Start) -> None:
    served = await start(workers=1)
    assert served.children() == set()
    await _whoami(served, 3)
    served.process.send_signal(signal.SIGTERM)
    assert await served.wait() == 0
    assert "bridge.runtime.workers" not in served.log()


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_client_that_goes_away_cancels_the_upstream_request(
    start: Start, homeserver: FakeHomeserver, workers: int
) -> None:
    arrived, gone = asyncio.Event(), asyncio.Event()

    async def hold(_request: web.Request) -> web.StreamResponse:
        arrived.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            # The fake's server (aiohttp's TestServer) cancels a handler whose
            # connection is lost: the bridge closed its upstream connection.
            gone.set()
            raise
        return web.json_response({})

    homeserver.answer = hold
    served = await start(workers=workers)
    _, writer = await asyncio.open_connection("127.0.0.1", served.port)
    head = f"GET {WHOAMI} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    writer.write(head.encode())
    await writer.drain()
    await asyncio.wait_for(arrived.wait(), 10)
    writer.close()
    await writer.wait_closed()
    # The bridge dropped its request to the homeserver (handler_cancellation).
    await asyncio.wait_for(gone.wait(), 5)


async def test_a_config_error_in_a_worker_stops_all_with_11(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """The store cannot be read with the configured key: a config error the main
    process cannot see, found by each worker at start."""
    db = tmp_path / "bridge.db"
    document = _document("http://127.0.0.1:9/", "http://127.0.0.1:9", free_port(), 2)
    document["homeserver"]["strategy"] = "device_login"
    document["store"] = {"path": str(db), "encryption_keys": [Fernet.generate_key().decode()]}
    bridge = Bridge(tmp_path, document, processes)
    store = await open_store(load_config(bridge.config).store)  # type: ignore[arg-type]
    await store.save_device_token("@alice:example.org", "DEVA", "syt_secret")
    await store.close()
    document["store"]["encryption_keys"] = [Fernet.generate_key().decode()]
    bridge.write(document)

    bridge.start(INFO)
    assert await bridge.wait() == 11
    logged = bridge.log()
    assert "store.encryption_keys" in logged
    assert "exited with code 11: a configuration error; stopping every worker" in logged
    assert "syt_secret" not in logged


async def test_workers_that_cannot_start_stop_all_with_1(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """The port is held by another program (without SO_REUSEPORT)."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        document = _document("http://127.0.0.1:9/", "http://127.0.0.1:9", port, 2)
        bridge = Bridge(tmp_path, document, processes)
        bridge.start(INFO)
        assert await bridge.wait() == 1
    logged = bridge.log()
    assert f"cannot listen on 127.0.0.1 port {port}: Address already in use" in logged
    assert "3 failed starts in a row; stopping every worker" in logged


async def test_workers_need_a_fixed_port(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    document = _document("http://127.0.0.1:9/", "http://127.0.0.1:9", 0, 2)
    bridge = Bridge(tmp_path, document, processes)
    bridge.start(INFO)
    assert await bridge.wait() == 11
    assert "listen.port" in bridge.log()


def test_a_worker_that_never_gets_ready_is_killed_as_a_failed_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A "worker" that hangs in its start-up: never says ready, never exits.
    hangs = [sys.executable, "-c", "import time; time.sleep(60)"]
    supervisor = Supervisor(hangs, 1, stop_timeout=5.0, config_error_code=11, start_timeout=0.3)
    started = time.monotonic()
    with caplog.at_level("ERROR", logger="bridge.runtime.workers"):
        assert supervisor.run() == 1
    # Three starts, each killed after 0.3 s, with the restart delays between them.
    assert time.monotonic() - started < 10
    assert caplog.text.count("not ready after 0s: killing it") == 3
    assert "3 failed starts in a row" in caplog.text


async def test_ops_on_the_public_port_of_another_address_is_still_the_ops_listener(
    tmp_path: Path,
    issuer: FakeIssuer,
    homeserver: FakeHomeserver,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    """Each worker's sockets are told apart by the listener they were bound for, not
    by port: ops on [::1]:P and the public listener on 127.0.0.1:P stay apart."""
    port = free_port()
    document = _document(issuer.url, homeserver.url, port, workers=2)
    document["ops"] = {"enabled": True, "host": "::1", "port": port}
    served = Served(tmp_path, document, processes)
    served.start(INFO)
    await until(lambda: len(served.ready()) == 2, "two workers ready")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://[::1]:{port}/health") as resp:
            assert resp.status == 200, await resp.text()
        async with session.get(f"http://[::1]:{port}{WHOAMI}") as resp:
            assert resp.status == 404  # the ops listener serves no client API
        async with session.get(
            served.base + WHOAMI, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as resp:
            assert resp.status == 200, await resp.text()
        async with session.get(served.base + "/health") as resp:
            assert resp.status != 200  # nor the public one /health


async def test_ready_speaks_for_every_worker(
    tmp_path: Path,
    issuer: FakeIssuer,
    homeserver: FakeHomeserver,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    """One worker without the issuer's discovery document would answer its share of
    requests with 503: the instance is not ready, whichever worker answers /ready."""
    issuer.discovery_answers = 1  # the first worker to ask gets it, the other never
    document = _document(issuer.url, homeserver.url, free_port(), workers=2)
    ops_port = free_port()
    document["ops"] = {"enabled": True, "host": "127.0.0.1", "port": ops_port}
    served = Served(tmp_path, document, processes)
    served.start(INFO)
    await until(lambda: len(served.ready()) == 2, "two workers ready")
    answers = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for _ in range(20):  # each on a connection of its own: the kernel picks a worker
            async with session.get(f"http://127.0.0.1:{ops_port}/ready") as resp:
                answers.append((resp.status, (await resp.json())["checks"]["issuer"]["detail"]))
    assert {status for status, _ in answers} == {503}, answers
    assert any("a worker has not loaded" in detail for _, detail in answers), answers

    issuer.discovery_answers = None  # the other worker's next try (every 5 s) succeeds
    deadline = time.monotonic() + 15
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"http://127.0.0.1:{ops_port}/ready") as resp:
                if resp.status == 200:
                    break
            assert time.monotonic() < deadline, "never ready"
            await asyncio.sleep(0.2)
