"""The ``store`` fixture: every store test runs on SQLite and on a real PostgreSQL.

The PostgreSQL server is started once per session, and only when a
PostgreSQL test runs; each test gets a database of its own.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.store.harness import StoreUnderTest
from tests.support.postgres import PostgresServer, start_postgres


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


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreUnderTest]:
    """An empty store database; ``await store.open()`` gives an instance on it."""
    if request.param == "sqlite":
        target = StoreUnderTest("sqlite", path=tmp_path / "bridge.db")
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        database = f"store_{uuid.uuid4().hex[:16]}"
        conn = await asyncpg.connect(server.dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{database}"')
        finally:
            await conn.close()
        target = StoreUnderTest("postgres", dsn=server.dsn_for(database))
    try:
        yield target
    finally:
        await target.close_all()
