"""The ``store`` fixture: every store test runs on SQLite and on a real PostgreSQL.

The PostgreSQL server (``postgres_server``, tests/conftest.py) is started once
per session, and only when a PostgreSQL test runs; each test gets a database
of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.store.harness import StoreUnderTest
from tests.support.postgres import PostgresServer


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
