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
import json
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
from bridge.store.records import ApplyMoments, LoginSession, LogoutMoment, digest
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


_SESSION_UPSERT = (
    "INSERT INTO login_sessions (user_id, device_id, sub, sid, refresh_hash,"
    " refresh_ciphertext, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)"
    " ON CONFLICT (user_id, device_id) DO UPDATE SET sub = excluded.sub, sid = excluded.sid,"
    " refresh_hash = excluded.refresh_hash, refresh_ciphertext = excluded.refresh_ciphertext,"
    " updated_at = excluded.updated_at"
)
_SELECT_SESSIONS = (
    "SELECT user_id, device_id, sub, sid, refresh_ciphertext FROM login_sessions WHERE "
)
# The channel logout moments are announced on, in the transaction that records them.
LOGOUT_CHANNEL = "matrix_oidc_bridge_logout"
# Seconds between liveness checks of the LISTEN connection, and before reconnecting.
_LISTEN_CHECK = 5.0
_LISTEN_RETRY = 1.0


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

    def __init__(
        self, pool: asyncpg.Pool[asyncpg.Record], cipher: TokenCipher, dsn: str = ""
    ) -> None:
        self._pool = pool
        self._cipher = cipher
        # For the LISTEN connection, which lives outside the pool.
        self._dsn = dsn
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
        store = cls(pool, cipher, dsn)
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
            sessions = await conn.fetch(
                "SELECT refresh_ciphertext, user_id, device_id FROM login_sessions"
                " WHERE refresh_ciphertext IS NOT NULL FOR UPDATE"
            )
            await conn.executemany(
                "UPDATE login_sessions SET refresh_ciphertext = $1"
                " WHERE user_id = $2 AND device_id = $3",
                [(self._cipher.rotate(str(r[0])), r[1], r[2]) for r in sessions],
            )
            secrets = await conn.fetch(
                "SELECT payload_ciphertext, kind, secret_hash FROM login_secrets FOR UPDATE"
            )
            await conn.executemany(
                "UPDATE login_secrets SET payload_ciphertext = $1"
                " WHERE kind = $2 AND secret_hash = $3",
                [(self._cipher.rotate(str(r[0])), r[1], r[2]) for r in secrets],
            )
            await conn.execute(
                "UPDATE store_meta SET value = $1 WHERE name = $2",
                self._cipher.seal_canary(),
                CANARY,
            )
        return len(updates)

    # -- the legacy login layer (bridge.store.records) -----------------------------

    async def put_secret(
        self, kind: str, secret: str, binding: str, payload: str, expires_at: int
    ) -> None:
        """Keep a one-time secret (see :class:`~bridge.store.Store`)."""
        hashed = digest(secret)
        sealed = self._cipher.seal(f"secret:{kind}", hashed, payload)
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO login_secrets (kind, secret_hash, binding_hash, payload_ciphertext,"
                " expires_at) VALUES ($1, $2, $3, $4, $5)",
                kind,
                hashed,
                binding,
                sealed,
                expires_at,
            )

    async def take_secret(self, kind: str, secret: str, now: int) -> tuple[str, str] | None:
        """Use a one-time secret up: one DELETE ... RETURNING, which only one
        instance's statement can win."""
        hashed = digest(secret)
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "DELETE FROM login_secrets WHERE kind = $1 AND secret_hash = $2"
                " RETURNING binding_hash, payload_ciphertext, expires_at",
                kind,
                hashed,
            )
        if row is None or int(row[2]) <= now:
            return None
        return str(row[0]), self._cipher.unseal(f"secret:{kind}", hashed, str(row[1]))

    def _session(self, row: asyncpg.Record) -> LoginSession:
        user_id, device_id, sub, sid, sealed = str(row[0]), str(row[1]), row[2], row[3], row[4]
        refresh = None
        if sealed is not None:
            try:
                refresh = self._cipher.unseal(user_id, device_id, str(sealed))
            except Misbound:
                log.warning(
                    "stored refresh token of %s %s was sealed for another", user_id, device_id
                )
        return LoginSession(user_id, device_id, sub, sid, refresh)

    async def save_session(self, session: LoginSession) -> None:
        """Keep (replace) the session of its device."""
        refresh = session.refresh_token
        async with self._connection() as conn:
            await conn.execute(
                _SESSION_UPSERT,
                session.user_id,
                session.device_id,
                session.sub,
                session.sid,
                None if refresh is None else digest(refresh),
                None
                if refresh is None
                else self._cipher.seal(session.user_id, session.device_id, refresh),
                int(time.time()),
            )

    async def session_by_refresh(self, refresh_token: str) -> LoginSession | None:
        """The session whose client holds ``refresh_token`` now."""
        async with self._connection() as conn:
            row = await conn.fetchrow(_SELECT_SESSIONS + "refresh_hash = $1", digest(refresh_token))
        return None if row is None else self._session(row)

    async def replace_refresh(
        self, user_id: str, device_id: str, old: str, new: str | None
    ) -> bool:
        """Compare and set the session's refresh token."""
        sealed = None if new is None else self._cipher.seal(user_id, device_id, new)
        async with self._connection() as conn:
            status = await conn.execute(
                "UPDATE login_sessions SET refresh_hash = $1, refresh_ciphertext = $2,"
                " updated_at = $3 WHERE user_id = $4 AND device_id = $5 AND refresh_hash = $6",
                None if new is None else digest(new),
                sealed,
                int(time.time()),
                user_id,
                device_id,
                digest(old),
            )
        return str(status) == "UPDATE 1"

    async def sessions(
        self, *, user_id: str | None = None, sid: str | None = None, sub: str | None = None
    ) -> list[LoginSession]:
        """The sessions matching every criterion given."""
        criteria = [(c, v) for c, v in (("user_id", user_id), ("sid", sid), ("sub", sub)) if v]
        if not criteria:
            raise ValueError("sessions() needs a criterion")
        where = " AND ".join(f"{column} = ${n}" for n, (column, _) in enumerate(criteria, 1))
        async with self._connection() as conn:
            rows = await conn.fetch(
                _SELECT_SESSIONS + where + " ORDER BY user_id, device_id",
                *(v for _, v in criteria),
            )
        return [self._session(row) for row in rows]

    async def take_sessions(self, user_id: str, device_id: str | None) -> list[LoginSession]:
        """Delete and return the device's (or user's) sessions, in one statement."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                "DELETE FROM login_sessions WHERE user_id = $1"
                " AND ($2::text IS NULL OR device_id = $2)"
                " RETURNING user_id, device_id, sub, sid, refresh_ciphertext",
                user_id,
                device_id,
            )
        return sorted((self._session(row) for row in rows), key=lambda x: x.device_id)

    async def add_logout_moment(
        self, user_id: str, device_id: str | None, not_before: int, token_hash: str | None = None
    ) -> LogoutMoment:
        """Record a moment and NOTIFY it in the same transaction: every instance that
        LISTENs hears it when it commits."""
        async with self._transaction() as conn:
            seq = await conn.fetchval(
                "INSERT INTO logout_moments (user_id, device_id, not_before, token_hash)"
                " VALUES ($1, $2, $3, $4) RETURNING seq",
                user_id,
                device_id,
                not_before,
                token_hash,
            )
            moment = LogoutMoment(int(seq), user_id, device_id, not_before, token_hash)
            await conn.execute(
                "SELECT pg_notify($1, $2)", LOGOUT_CHANNEL, json.dumps(_announced(moment))
            )
        return moment

    async def logout_moments_since(self, seq: int) -> list[LogoutMoment]:
        """The moments recorded after ``seq``."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT seq, user_id, device_id, not_before, token_hash FROM logout_moments"
                " WHERE seq > $1 ORDER BY seq",
                seq,
            )
        return [LogoutMoment(int(r[0]), str(r[1]), r[2], int(r[3]), r[4]) for r in rows]

    async def follow_logout_moments(self, apply: ApplyMoments, *, interval: float) -> None:
        """LISTEN on a connection of its own; after every (re)connection, read every
        moment again (announcements made while it was away are not queued for it).

        ``interval`` is not used: PostgreSQL announces each moment as it commits.
        """
        while True:
            try:
                await self._listen(apply)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                log.warning("listening for logouts failed (%s); reconnecting", type(e).__name__)
            await asyncio.sleep(_LISTEN_RETRY)

    async def _listen(self, apply: ApplyMoments) -> None:
        conn = await asyncpg.connect(
            self._dsn, server_settings={"application_name": "matrix-oidc-bridge listen"}
        )
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())

            def announced(_conn: object, _pid: int, _channel: str, payload: object) -> None:
                try:
                    moment = _moment(json.loads(str(payload)))
                except (ValueError, KeyError, TypeError):
                    log.warning("ignored a malformed logout announcement")
                    return
                apply([moment])

            await conn.add_listener(LOGOUT_CHANNEL, announced)
            apply(await self.logout_moments_since(0))
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), _LISTEN_CHECK)
                if not lost.is_set():
                    await conn.fetchval("SELECT 1")  # a dead connection raises here
        finally:
            with contextlib.suppress(Exception):
                await conn.close(timeout=1)

    async def use_logout_token_id(self, jti: str, expires_at: int) -> bool:
        """Record a logout token's ID, once (the primary key decides between instances)."""
        async with self._connection() as conn:
            status = await conn.execute(
                "INSERT INTO logout_token_ids (jti_hash, expires_at) VALUES ($1, $2)"
                " ON CONFLICT (jti_hash) DO NOTHING",
                digest(jti),
                expires_at,
            )
        return str(status) == "INSERT 0 1"

    async def sweep(self, now: int, moments_before: int) -> None:
        """Drop what has expired."""
        async with self._transaction() as conn:
            await conn.execute("DELETE FROM login_secrets WHERE expires_at <= $1", now)
            await conn.execute("DELETE FROM logout_token_ids WHERE expires_at <= $1", now)
            await conn.execute("DELETE FROM logout_moments WHERE not_before < $1", moments_before)

    async def ping(self) -> None:
        """Raise unless the database answers a query."""
        await self._pool.fetchval("SELECT 1")

    async def close(self) -> None:
        """Close the pool, waiting for connections in use to come back."""
        if self._closed:
            return
        self._closed = True
        await self._pool.close()


def _announced(moment: LogoutMoment) -> dict[str, object]:
    return {
        "seq": moment.seq,
        "user_id": moment.user_id,
        "device_id": moment.device_id,
        "not_before": moment.not_before,
        "token_hash": moment.token_hash,
    }


def _moment(announced: dict[str, object]) -> LogoutMoment:
    device_id, token_hash = announced["device_id"], announced.get("token_hash")
    return LogoutMoment(
        seq=int(str(announced["seq"])),
        user_id=str(announced["user_id"]),
        device_id=None if device_id is None else str(device_id),
        not_before=int(str(announced["not_before"])),
        token_hash=None if token_hash is None else str(token_hash),
    )
