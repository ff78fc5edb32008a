"""The PostgreSQL store: one database that bridge instances on several hosts share.

A small asyncpg pool. ``login_lock`` takes a transaction-scoped advisory lock
(``pg_advisory_xact_lock``) on a 64-bit hash of (user, device) on a pooled
connection held for the block, so it serialises logins of one device across
every instance while other devices proceed. Within one process, blocks for
one device first queue on an asyncio lock, and at most :data:`_LOCK_SLOTS`
blocks hold a connection at once, so waiting logins never take the whole pool
from ordinary reads. Migrations run under an advisory lock of their own, so
instances starting together migrate once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import weakref
from collections.abc import AsyncIterator
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from bridge.errors import ConfigError
from bridge.store.crypto import Misbound, TokenCipher
from bridge.store.lock import LOCK_TIMEOUT, LockRouting
from bridge.store.schema import CANARY, CREATE_SCHEMA_VERSION, pending

log = logging.getLogger("bridge.store")

# Generic only in the type stubs.
Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

_POOL_SIZE = 10
# Pool connections that login_lock blocks may hold at once; the rest serve calls.
_LOCK_SLOTS = 8

_UPSERT = (
    "INSERT INTO device_tokens (user_id, device_id, token_ciphertext, created_at, updated_at)"
    " VALUES ($1, $2, $3, $4, $4)"
    " ON CONFLICT (user_id, device_id) DO UPDATE"
    " SET token_ciphertext = excluded.token_ciphertext, updated_at = excluded.updated_at"
)


def advisory_key(*parts: str) -> int:
    """A signed 64-bit advisory lock key for ``parts``, apart from other applications'."""
    digest = hashlib.blake2b(
        "\0".join(parts).encode(), digest_size=8, person=b"mx-oidc-bridge"
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


_MIGRATION_LOCK = advisory_key("migrate")


async def _acquire_by(lock: asyncio.Lock | asyncio.Semaphore, deadline: float) -> None:
    try:
        async with asyncio.timeout_at(deadline):
            await lock.acquire()
    except TimeoutError:
        raise TimeoutError("the device's login lock is busy") from None


class PostgresStore:
    """:class:`~bridge.store.Store` on a PostgreSQL database."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], cipher: TokenCipher) -> None:
        self._pool = pool
        self._cipher = cipher
        self._routing: LockRouting[Connection] = LockRouting()
        self._device_locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._lock_slots = asyncio.Semaphore(_LOCK_SLOTS)
        self._closed = False

    @classmethod
    async def open(cls, dsn: str, cipher: TokenCipher) -> PostgresStore:
        """Connect to ``dsn`` and create or migrate the schema as needed."""
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=_POOL_SIZE,
                server_settings={"application_name": "matrix-oidc-bridge"},
            )
        except ValueError:
            # Not chained: the parser's message may quote the DSN, password and all.
            raise ConfigError("store.dsn", "is not a valid PostgreSQL URL") from None
        store = cls(pool, cipher)
        try:
            await store._migrate()
        except BaseException:
            await store.close()
            raise
        return store

    async def _migrate(self) -> None:
        applied: list[str] = []
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(CREATE_SCHEMA_VERSION)
            current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            now = int(time.time())
            for step in pending(int(current)):
                for sql in step.statements("postgres"):
                    await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
                    step.version,
                    now,
                )
                applied.append(f"{step.version} ({step.summary})")
            canary = await conn.fetchval("SELECT value FROM store_meta WHERE name = $1", CANARY)
            row = await conn.fetchrow(
                "SELECT user_id, device_id, token_ciphertext FROM device_tokens LIMIT 1"
            )
            sample = None if row is None else (str(row[0]), str(row[1]), str(row[2]))
            new_canary = self._cipher.verify_store(canary, sample)
            if new_canary is not None:
                await conn.execute(
                    "INSERT INTO store_meta (name, value) VALUES ($1, $2)", CANARY, new_canary
                )
        for step_name in applied:
            log.info("store schema migrated to version %s", step_name)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """The held ``login_lock`` connection, or one from the pool."""
        held = self._routing.current()
        if held is not None:
            async with held.guard:
                yield held.connection
            return
        async with self._pool.acquire() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Connection]:
        """The held ``login_lock`` transaction, or a pooled connection in a transaction."""
        held = self._routing.current()
        if held is not None:
            async with held.guard:
                yield held.connection
            return
        async with self._pool.acquire() as conn, conn.transaction():
            yield conn

    @contextlib.asynccontextmanager
    async def login_lock(self, user_id: str, device_id: str) -> AsyncIterator[None]:
        """Hold the device's advisory lock for the block (see :mod:`bridge.store`)."""
        self._routing.refuse_nesting()
        deadline = asyncio.get_running_loop().time() + LOCK_TIMEOUT
        key = (user_id, device_id)
        local = self._device_locks.get(key)
        if local is None:
            local = self._device_locks[key] = asyncio.Lock()
        await _acquire_by(local, deadline)
        try:
            await _acquire_by(self._lock_slots, deadline)
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    left = deadline - asyncio.get_running_loop().time()
                    await conn.execute(
                        "SELECT set_config('lock_timeout', $1, true)", f"{max(1, int(left * 1000))}"
                    )
                    try:
                        await conn.execute(
                            "SELECT pg_advisory_xact_lock($1)", advisory_key("login", *key)
                        )
                    except asyncpg.LockNotAvailableError as e:
                        raise TimeoutError("the device's login lock is busy") from e
                    async with self._routing.hold(conn):
                        yield
            finally:
                self._lock_slots.release()
        finally:
            local.release()

    async def device_token(self, user_id: str, device_id: str) -> str | None:
        """The decrypted homeserver token of the device, or None."""
        async with self._connection() as conn:
            ciphertext = await conn.fetchval(
                "SELECT token_ciphertext FROM device_tokens WHERE user_id = $1 AND device_id = $2",
                user_id,
                device_id,
            )
        if ciphertext is None:
            return None
        try:
            return self._cipher.unseal(user_id, device_id, str(ciphertext))
        except Misbound:
            log.warning("stored token of %s %s was sealed for another device", user_id, device_id)
            return None

    async def save_device_token(self, user_id: str, device_id: str, token: str) -> None:
        """Encrypt and store the device's token, replacing any previous one."""
        ciphertext = self._cipher.seal(user_id, device_id, token)
        async with self._connection() as conn:
            await conn.execute(_UPSERT, user_id, device_id, ciphertext, int(time.time()))

    async def delete_device(self, user_id: str, device_id: str) -> None:
        """Forget the device."""
        async with self._connection() as conn:
            await conn.execute(
                "DELETE FROM device_tokens WHERE user_id = $1 AND device_id = $2",
                user_id,
                device_id,
            )

    async def devices_of(self, user_id: str) -> list[str]:
        """The user's device IDs with a stored token, sorted."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT device_id FROM device_tokens WHERE user_id = $1 ORDER BY device_id",
                user_id,
            )
        return [str(row[0]) for row in rows]

    async def rotate_key(self) -> int:
        """Re-encrypt every token, and the canary, with the first key."""
        async with self._transaction() as conn:
            # FOR UPDATE: a token saved meanwhile by another instance waits, and is
            # not overwritten with the older one read here.
            rows = await conn.fetch(
                "SELECT user_id, device_id, token_ciphertext FROM device_tokens FOR UPDATE"
            )
            updates = [(self._cipher.rotate(str(row[2])), row[0], row[1]) for row in rows]
            await conn.executemany(
                "UPDATE device_tokens SET token_ciphertext = $1"
                " WHERE user_id = $2 AND device_id = $3",
                updates,
            )
            await conn.execute(
                "UPDATE store_meta SET value = $1 WHERE name = $2",
                self._cipher.seal_canary(),
                CANARY,
            )
        return len(updates)

    async def ping(self) -> None:
        """Raise unless the database answers a query."""
        await self._pool.fetchval("SELECT 1")

    async def close(self) -> None:
        """Close the pool, waiting for connections in use to come back."""
        if self._closed:
            return
        self._closed = True
        await self._pool.close()
