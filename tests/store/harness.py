"""One empty store database on one backend, and raw access to it from outside the store."""

from __future__ import annotations

import itertools
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from cryptography.fernet import Fernet

from bridge.config import StoreConfig, StoreKind
from bridge.store import Store, open_store

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()


@dataclass
class StoreUnderTest:
    """An empty database: ``open`` gives :class:`Store` objects on it ("instances")."""

    kind: StoreKind
    path: Path | None = None  # sqlite
    dsn: str | None = None  # postgres
    _opened: list[Store] = field(default_factory=list)

    def config(self, *keys: str) -> StoreConfig:
        """The store's config with ``keys`` (default: ``KEY_A`` alone)."""
        keys = keys or (KEY_A,)
        if self.kind == "sqlite":
            return StoreConfig(encryption_keys=keys, kind="sqlite", path=str(self.path))
        return StoreConfig(encryption_keys=keys, kind="postgres", dsn=self.dsn)

    async def open(self, *keys: str) -> Store:
        """A new store instance on the database, closed at the end of the test."""
        store = await open_store(self.config(*keys))
        self._opened.append(store)
        return store

    async def close_all(self) -> None:
        for store in self._opened:
            await store.close()

    async def execute(self, sql: str, *params: object) -> None:
        """Run one SQL statement on the database directly (``?`` placeholders)."""
        if self.path is not None:
            with sqlite3.connect(self.path) as db:
                db.execute(sql, params)
            db.close()
            return
        numbers = itertools.count(1)
        sql = re.sub(r"\?", lambda _: f"${next(numbers)}", sql)
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(sql, *params)
        finally:
            await conn.close()

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        """The rows of a query run on the database directly."""
        if self.path is not None:
            db = sqlite3.connect(self.path)
            try:
                return [tuple(row) for row in db.execute(sql)]
            finally:
                db.close()
        conn = await asyncpg.connect(self.dsn)
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()

    async def at_rest(self) -> bytes:
        """Everything the database keeps: the SQLite file with its WAL and
        shared-memory files, or every row of every table as PostgreSQL text."""
        if self.path is not None:
            files = [self.path, *(Path(f"{self.path}{suffix}") for suffix in ("-wal", "-shm"))]
            return b"".join(f.read_bytes() for f in files if f.exists())
        tables = await self.fetch(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() ORDER BY table_name"
        )
        dump: list[str] = []
        for (table,) in tables:
            # The table names come from the catalogue just read.
            rows = await self.fetch(f'SELECT t::text FROM "{table}" t')  # noqa: S608
            dump += [f"{table}: {row[0]}" for row in rows]
        return "\n".join(dump).encode()
