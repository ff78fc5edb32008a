"""Fixtures shared by every test: the fault-injecting fake homeserver, a real
PostgreSQL server for the tests that need one, and the kill of ``serve`` processes."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpServer

from tests.fakes import FakeHomeserver
from tests.support.postgres import PostgresServer, start_postgres
from tests.support.serve import kill


@pytest.fixture
async def homeserver(aiohttp_server: AiohttpServer) -> FakeHomeserver:
    """A fake homeserver that records every request and answers as told."""
    return await FakeHomeserver.start(aiohttp_server)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server on 127.0.0.1 for the whole session."""
    # Not under pytest's tmp_path: the postgres user must be able to reach it.
    workdir = Path(tempfile.mkdtemp(prefix="matrix-oidc-bridge-pg-"))
    server = start_postgres(workdir)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Every ``serve`` process a test starts; killed (with its workers) if still running."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        kill(process)
