"""``serve`` as systemd runs it: notifications over a real ``NOTIFY_SOCKET``, SIGHUP
reloads, SIGTERM drains within the grace period, and /metrics of two workers together.

Real ``python -m bridge serve`` processes on 127.0.0.1, in front of the fake issuer
and homeserver served by this test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpServer

from bridge.ops.metrics import PREFIX
from tests.fakes import (
    SERVER_NAME,
    FakeHomeserver,
    FakeIssuer,
    active_claims,
    bridge_document,
    free_port,
)
from tests.support.serve import Bridge, accepts, until

TOKEN = "oauth-token-for-alice"
WHOAMI = "/_matrix/client/v3/account/whoami"


@pytest.fixture
async def issuer(aiohttp_server: AiohttpServer) -> FakeIssuer:
    issuer = await FakeIssuer.start(aiohttp_server)
    issuer.tokens[TOKEN] = active_claims("alice", "DEVA")
    return issuer


@pytest.fixture
def make_bridge(
    tmp_path: Path,
    issuer: FakeIssuer,
    homeserver: FakeHomeserver,
    processes: list[subprocess.Popen[bytes]],
) -> Callable[..., Bridge]:
    def make(*overrides: dict[str, Any]) -> Bridge:
        document = bridge_document(
            issuer.url,
            homeserver.url,
            {
                "listen": {"host": "127.0.0.1", "port": free_port()},
                "ops": {"enabled": True, "host": "127.0.0.1", "port": free_port()},
            },
            *overrides,
        )
        return Bridge(tmp_path, document, processes)

    return make


async def whoami(base: str, session: aiohttp.ClientSession) -> int:
    async with session.get(base + WHOAMI, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        await resp.read()
        return resp.status


# -- systemd notifications --------------------------------------------------------------


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
async def test_notify_socket_ready_watchdog_stopping(
    make_bridge: Callable[..., Bridge], tmp_path: Path, abstract: bool
) -> None:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"matrix-oidc-bridge-test-{os.getpid()}-{free_port()}"
        receiver.bind("\0" + name)
        address = "@" + name
    else:
        address = str(tmp_path / "notify.sock")
        receiver.bind(address)
    receiver.setblocking(False)
    loop = asyncio.get_running_loop()
    bridge = make_bridge()
    messages: list[tuple[float, str, bool]] = []  # (when, message, public port accepting)

    async def receive(until_text: str, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while not any(until_text in m for _, m, _ in messages):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {until_text!r} in {messages}:\n{bridge.log()}"
            with contextlib.suppress(TimeoutError):
                data = await asyncio.wait_for(loop.sock_recv(receiver, 4096), remaining)
                messages.append((time.monotonic(), data.decode(), bridge.accepts()))

    with receiver:
        bridge.start({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
        await receive("READY=1")
        [(_, ready, accepting)] = [m for m in messages if "READY=1" in m[1]]
        # Sent once the listeners accept connections: the public one and the ops one.
        assert accepting
        assert bridge.accepts(bridge.document["ops"]["port"])
        assert "STATUS=serving" in ready.split("\n")

        # The watchdog: every half WATCHDOG_USEC (0.1 s) while the loop runs.
        listened_from = time.monotonic()
        while time.monotonic() - listened_from < 1.0:
            with contextlib.suppress(TimeoutError):
                data = await asyncio.wait_for(loop.sock_recv(receiver, 4096), 0.5)
                messages.append((time.monotonic(), data.decode(), True))
        pings = [when for when, m, _ in messages if m == "WATCHDOG=1" and when >= listened_from]
        assert len(pings) >= 4, messages

        assert bridge.process is not None
        bridge.process.send_signal(signal.SIGTERM)
        await receive("STOPPING=1")
        assert await bridge.wait() == 0


# -- reload --------------------------------------------------------------------------------


async def test_sighup_changes_the_log_level_without_dropping_a_request_in_flight(
    make_bridge: Callable[..., Bridge], homeserver: FakeHomeserver
) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow(_request: web.Request) -> web.StreamResponse:
        arrived.set()
        await release.wait()
        return web.json_response({"user_id": f"@alice:{SERVER_NAME}"})

    bridge = make_bridge({"logging": {"level": "INFO"}})
    bridge.start()
    await until(bridge.accepts, "listening")
    async with aiohttp.ClientSession() as session:
        assert await whoami(bridge.base, session) == 200
        await until(lambda: "GET /_matrix/client/v3/account/whoami 200" in bridge.log(), "logged")

        homeserver.answer = slow
        in_flight = asyncio.create_task(whoami(bridge.base, session))
        await asyncio.wait_for(arrived.wait(), 10)

        changed = {**bridge.document, "logging": {"level": "WARNING", "format": "json"}}
        changed["listen"] = {**changed["listen"], "max_request_body": "1M"}
        bridge.write(changed)
        assert bridge.process is not None
        bridge.process.send_signal(signal.SIGHUP)
        await until(
            lambda: "reload: applying logging.format, logging.level" in bridge.log(), "reload"
        )
        assert "listen.max_request_body changed; ignored until the next restart" in bridge.log()

        assert not in_flight.done()
        release.set()
        assert await in_flight == 200  # not dropped by the reload
        homeserver.answer = _whoami_answer
        for _ in range(3):
            assert await whoami(bridge.base, session) == 200

    await asyncio.sleep(1.0)  # the access log's batch
    after = bridge.log().split("reload: applying ", 1)[1]
    # WARNING: no access line any more, for the request in flight or the ones after.
    assert "whoami" not in after
    bridge.process.send_signal(signal.SIGTERM)
    assert await bridge.wait() == 0


async def _whoami_answer(_request: web.Request) -> web.StreamResponse:
    return web.json_response({"user_id": f"@alice:{SERVER_NAME}"})


async def test_a_reload_with_a_bad_file_changes_nothing(
    make_bridge: Callable[..., Bridge],
) -> None:
    bridge = make_bridge()
    bridge.start()
    await until(bridge.accepts, "listening")
    bridge.config.write_text("server_name: [unclosed\n", encoding="utf-8")
    assert bridge.process is not None
    bridge.process.send_signal(signal.SIGHUP)
    await until(lambda: "reload: config error" in bridge.log(), "the reload refused")
    async with aiohttp.ClientSession() as session:
        assert await whoami(bridge.base, session) == 200
    bridge.process.send_signal(signal.SIGTERM)
    assert await bridge.wait() == 0


# -- stop ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("upstream", "grace"), [(1.0, 10.0), (30.0, 1.0)], ids=["within", "cut"])
async def test_sigterm_lets_a_slow_answer_finish_within_the_grace_period(
    make_bridge: Callable[..., Bridge],
    homeserver: FakeHomeserver,
    upstream: float,
    grace: float,
) -> None:
    arrived = asyncio.Event()

    async def slow(_request: web.Request) -> web.StreamResponse:
        arrived.set()
        await asyncio.sleep(upstream)
        return web.json_response({"user_id": f"@alice:{SERVER_NAME}"})

    homeserver.answer = slow
    bridge = make_bridge({"listen": {"grace_period": grace}})
    bridge.start()
    await until(bridge.accepts, "listening")
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(whoami(bridge.base, session))
        await asyncio.wait_for(arrived.wait(), 10)
        stopped_at = time.monotonic()
        assert bridge.process is not None
        bridge.process.send_signal(signal.SIGTERM)
        await until(lambda: not accepts(bridge.port), "the port closed", within=5)
        code = await bridge.wait()
        took = time.monotonic() - stopped_at
        if upstream < grace:
            assert await request == 200  # finished within the grace period
            assert took >= upstream - 0.3
        else:
            with pytest.raises((aiohttp.ClientError, AssertionError)):
                assert await request == 200
            assert took < grace + 4  # not the upstream's 30 s
    assert code == 0
    assert "stopping: no new connections" in bridge.log()


# -- two workers -----------------------------------------------------------------------------


async def test_metrics_of_two_workers_are_served_together(
    make_bridge: Callable[..., Bridge], issuer: FakeIssuer
) -> None:
    bridge = make_bridge({"listen": {"workers": 2}})
    bridge.start({"BRIDGE_LOG_LEVEL": "INFO"})
    await until(lambda: bridge.log().count(") ready") == 2, "two workers ready")
    connector = aiohttp.TCPConnector(force_close=True)  # a worker chosen per connection
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(40):
            assert await whoami(bridge.base, session) == 200
        await until(lambda: bridge.log().count("bridge.access") >= 40, "the access log")
        served_by = {
            line.split("[", 1)[1].split("]", 1)[0]
            for line in bridge.log().splitlines()
            if "bridge.access" in line
        }
        assert len(served_by) == 2  # both workers answered some

        async def scrape() -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
            async with session.get(bridge.ops + "/metrics") as resp:
                assert resp.status == 200
                text = await resp.text()
            return text, {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }

        # Gauges sampled from live state are written every second by each worker.
        positive = (PREFIX + "token_cache_entries", (("cache", "positive"),))
        deadline = time.monotonic() + 5
        while (await scrape())[1][positive] != 2:
            assert time.monotonic() < deadline

        # Each scrape reaches one worker; each serves the sum of both.
        for _ in range(4):
            text, samples = await scrape()
            key = (
                PREFIX + "requests_total",
                (("method", "GET"), ("route", "client"), ("status", "2xx")),
            )
            assert samples[key] == 40
            # One introspection per worker (each has its own cache).
            ok = (PREFIX + "issuer_requests_total", (("call", "introspection"), ("outcome", "ok")))
            assert samples[ok] == len(issuer.introspections) == 2, text
            assert samples[(PREFIX + "requests_in_flight", ())] == 0
            assert samples[positive] == 2
            names = {name for name, _ in samples}
            for family in ("token_cache_lookups_total", "request_duration_seconds_bucket"):
                assert PREFIX + family in names
            assert not any("pid" in dict(labels) for _, labels in samples)

        async with session.get(bridge.ops + "/ready") as resp:
            assert resp.status == 200
            assert (await resp.json())["ready"] is True
    assert bridge.process is not None
    bridge.process.send_signal(signal.SIGTERM)
    assert await bridge.wait() == 0
    # The private multiprocess directory is gone with the main process.
    [directory] = [
        line.split("metrics in ", 1)[1].split(" ", 1)[0]
        for line in bridge.log().splitlines()
        if "the workers' metrics in " in line
    ]
    assert directory.startswith("/")
    assert not await asyncio.to_thread(Path(directory).exists)
