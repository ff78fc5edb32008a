"""The ``serve`` command as systemd runs it: logs one line per request, never a token."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml

from bridge.config import AppserviceConfig
from tests.integration.conftest import Login, auth, new_localpart
from tests.support.issuer import TestIssuer
from tests.support.net import free_port, wait_http
from tests.support.stack import served_bridge_document
from tests.support.synapse import SynapseServer


@dataclass
class Served:
    base: str
    log_path: Path
    process: subprocess.Popen[bytes]


@pytest.fixture
def served(
    tmp_path: Path, issuer: TestIssuer, synapse: SynapseServer, appservice: AppserviceConfig
) -> Iterator[Served]:
    """``matrix-oidc-bridge serve`` in its own process, logging at DEBUG."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    document = served_bridge_document(
        issuer=issuer, homeserver_url=synapse.base_url, appservice=appservice, port=port
    )
    config = tmp_path / "bridge.yaml"
    config.write_text(yaml.safe_dump(document), encoding="utf-8")
    log_path = tmp_path / "bridge.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve", "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={"BRIDGE_LOG_LEVEL": "DEBUG", "PATH": "/usr/bin:/bin"},
        )
    try:
        wait_http(base + "/.well-known/matrix/client", is_alive=lambda: process.poll() is None)
        yield Served(base, log_path, process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_serve_logs_requests_without_tokens(
    served: Served,
    issuer: TestIssuer,
    appservice: AppserviceConfig,
    login: Login,
    http: aiohttp.ClientSession,
) -> None:
    token = await login(new_localpart("alice"), "DEVA")
    whoami = served.base + "/_matrix/client/v3/account/whoami"
    async with http.get(whoami, headers=auth(token)) as resp:
        assert resp.status == 200
    async with http.get(whoami, params={"access_token": token}) as resp:
        assert resp.status == 200
    async with http.get(whoami, headers=auth("garbage-" + token[::-1])) as resp:
        assert resp.status == 401
    # A graceful stop on SIGTERM, with exit code 0.
    served.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(served.process.wait, 15) == 0

    logged = served.log_path.read_text(encoding="utf-8")
    assert logged.count("GET /_matrix/client/v3/account/whoami 200") == 2
    assert "GET /_matrix/client/v3/account/whoami 401" in logged
    for secret in (
        token,
        token[::-1],
        appservice.as_token,
        appservice.hs_token,
        issuer.bridge_client_secret,
    ):
        assert secret not in logged
