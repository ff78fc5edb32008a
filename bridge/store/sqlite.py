"""The SQLite store: one file, which several processes on one host may share.

WAL mode, so readers never wait for a writer; a busy timeout, so writers wait
for each other instead of failing at once; and every write in a
``BEGIN IMMEDIATE`` transaction, which takes the file's one write lock up
front. That lock is also the login lock: a ``login_lock`` block holds it from
start to end, serialising logins, and every other write, across every process
on the file. Each store has two connections, each on its own thread
(aiosqlite): one only reads, so reads never queue behind a write that is
waiting for another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiosqlite

from bridge.errors import ConfigError
from bridge.store.crypto import Misbound, TokenCipher
from bridge.store.lock import LOCK_TIMEOUT, LockRouting
from bridge.store.records import ApplyMoments, LoginSession, LogoutMoment, digest
from bridge.store.schema import CANARY, CREATE_SCHEMA_VERSION, pending

log = logging.getLogger("bridge.store")

_UPSERT = (
    "INSERT INTO device_tokens (user_id, device_id, token_ciphertext, created_at, updated_at)"
    " VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (user_id, device_id) DO UPDATE"
    " SET token_ciphertext = excluded.token_ciphertext, updated_at = excluded.updated_at"
)
_SESSION_UPSERT = (
    "INSERT INTO login_sessions (user_id, device_id, sub, sid, refresh_hash,"
    " refresh_ciphertext, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (user_id, device_id) DO UPDATE SET sub = excluded.sub, sid = excluded.sid,"
    " refresh_hash = excluded.refresh_hash, refresh_ciphertext = excluded.refresh_ciphertext,"
    " updated_at = excluded.updated_at"
)
_SELECT_SESSIONS = (
    "SELECT user_id, device_id, sub, sid, refresh_ciphertext FROM login_sessions WHERE "
)


def _create_private(file: Path) -> None:
    """Create the database file, readable by its owner only.

    SQLite gives its WAL and shared-memory files the same permissions.
    """
    with contextlib.suppress(FileExistsError):
        os.close(os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


async def _connect(file: Path) -> aiosqlite.Connection:
    # isolation_level=None: no implicit transactions; every one is explicit here.
    return await aiosqlite.connect(file, timeout=LOCK_TIMEOUT, isolation_level=None)


async def _first(
    conn: aiosqlite.Connection, sql: str, parameters: Iterable[Any] = ()
) -> tuple[Any, ...] | None:
    rows = list(await conn.execute_fetchall(sql, parameters))
    return tuple(rows[0]) if rows else None


async def _value(conn: aiosqlite.Connection, sql: str, parameters: Iterable[Any] = ()) -> Any:
    row = await _first(conn, sql, parameters)
    return None if row is None else row[0]


def _busy(error: sqlite3.OperationalError) -> bool:
    return getattr(error, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


async def _use_wal(conn: aiosqlite.Connection) -> str:
    """Switch the file to WAL mode; return the journal mode it is in.

    Two processes switching a new file at once can get SQLITE_BUSY at once,
    without the busy timeout (SQLite's deadlock avoidance): retry until it.
    """
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        try:
            return str(await _value(conn, "PRAGMA journal_mode = WAL"))
        except sqlite3.OperationalError as e:
            if not _busy(e) or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.01)


class SqliteStore:
    """:class:`~bridge.store.Store` on one SQLite file."""

    def __init__(
        self, reader: aiosqlite.Connection, writer: aiosqlite.Connection, cipher: TokenCipher
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._cipher = cipher
        # One transaction at a time on the writer connection, within this process.
        self._write_lock = asyncio.Lock()
        self._routing: LockRouting[aiosqlite.Connection] = LockRouting()
        # Rollbacks of abandoned BEGINs, still running (see _transaction).
        self._cleanups: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    async def open(cls, path: str, cipher: TokenCipher) -> SqliteStore:
        """Open the file at ``path``, creating and migrating it as needed."""
        file = Path(path)
        if not file.parent.is_dir():
            raise ConfigError("store.path", f"directory {file.parent} does not exist")
        _create_private(file)
        writer = await _connect(file)
        try:
            mode = await _use_wal(writer)
            if mode != "wal":
                raise ConfigError("store.path", f"{file} cannot use SQLite's WAL mode ({mode})")
            reader = await _connect(file)
        except BaseException:
            await writer.close()
            raise
        store = cls(reader, writer, cipher)
        try:
            await store._migrate()
        except BaseException:
            await store.close()
            raise
        return store

    async def _migrate(self) -> None:
        applied: list[str] = []
        async with self._transaction() as conn:
            await conn.execute(CREATE_SCHEMA_VERSION)
            current = await _value(conn, "SELECT COALESCE(MAX(version), 0) FROM schema_version")
            now = int(time.time())
            for step in pending(int(current)):
                for sql in step.statements("sqlite"):
                    await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                    (step.version, now),
                )
                applied.append(f"{step.version} ({step.summary})")
            canary = await _value(conn, "SELECT value FROM store_meta WHERE name = ?", (CANARY,))
            row = await _first(
                conn, "SELECT user_id, device_id, token_ciphertext FROM device_tokens LIMIT 1"
            )
            sample = None if row is None else (str(row[0]), str(row[1]), str(row[2]))
            new_canary = self._cipher.verify_store(canary, sample)
            if new_canary is not None:
                await conn.execute(
                    "INSERT INTO store_meta (name, value) VALUES (?, ?)", (CANARY, new_canary)
                )
        for step_name in applied:
            log.info("store schema migrated to version %s", step_name)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction on the writer: the file's write lock."""
        try:
            async with asyncio.timeout(LOCK_TIMEOUT):
                await self._write_lock.acquire()
        except TimeoutError:
            raise TimeoutError("the store's write lock is busy") from None
        try:
            await self._writer.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            self._write_lock.release()
            if _busy(e):
                raise TimeoutError("the store's write lock is busy") from e
            raise
        except BaseException:
            # Cancelled while SQLite waits for the file's lock on the connection's
            # thread: that BEGIN will still run there. Roll it back in the
            # background, keeping the writer until then, and let the caller go.
            cleanup = asyncio.create_task(self._abandon())
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
            raise
        try:
            try:
                yield self._writer
            except BaseException:
                await self._rollback()
                raise
            try:
                await self._writer.execute("COMMIT")
            except BaseException:
                await self._rollback()
                raise
        finally:
            self._write_lock.release()

    async def _abandon(self) -> None:
        try:
            await self._rollback()
        finally:
            self._write_lock.release()

    async def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.OperationalError):  # no transaction is active
            await self._writer.execute("ROLLBACK")

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[aiosqlite.Connection]:
        """The held ``login_lock`` transaction, or a transaction of its own."""
        held = self._routing.current()
        if held is not None:
            async with held.guard:
                yield held.connection
            return
        async with self._transaction() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[aiosqlite.Connection]:
        """The held ``login_lock`` transaction, or the read connection."""
        held = self._routing.current()
        if held is not None:
            async with held.guard:
                yield held.connection
            return
        yield self._reader

    @contextlib.asynccontextmanager
    async def login_lock(self, user_id: str, device_id: str) -> AsyncIterator[None]:
        """Hold the file's write lock for the block (see :mod:`bridge.store`).

        SQLite has one write lock per file, so this serialises every login and
        every write on the file, not only those of this device.
        """
        self._routing.refuse_nesting()
        async with self._transaction() as conn, self._routing.hold(conn):
            yield

    async def device_token(self, user_id: str, device_id: str) -> str | None:
        """The decrypted homeserver token of the device, or None."""
        async with self._reading() as conn:
            ciphertext = await _value(
                conn,
                "SELECT token_ciphertext FROM device_tokens WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
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
        now = int(time.time())
        async with self._writing() as conn:
            await conn.execute(_UPSERT, (user_id, device_id, ciphertext, now, now))

    async def delete_device(self, user_id: str, device_id: str) -> None:
        """Forget the device."""
        async with self._writing() as conn:
            await conn.execute(
                "DELETE FROM device_tokens WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            )

    async def devices_of(self, user_id: str) -> list[str]:
        """The user's device IDs with a stored token, sorted."""
        async with self._reading() as conn:
            rows = await conn.execute_fetchall(
                "SELECT device_id FROM device_tokens WHERE user_id = ? ORDER BY device_id",
                (user_id,),
            )
        return [str(row[0]) for row in rows]

    async def rotate_key(self) -> int:
        """Re-encrypt every token, and the canary, with the first key."""
        async with self._writing() as conn:
            rows = await conn.execute_fetchall(
                "SELECT user_id, device_id, token_ciphertext FROM device_tokens"
            )
            updates = [(self._cipher.rotate(str(row[2])), row[0], row[1]) for row in rows]
            await conn.executemany(
                "UPDATE device_tokens SET token_ciphertext = ? WHERE user_id = ? AND device_id = ?",
                updates,
            )
            sessions = await conn.execute_fetchall(
                "SELECT refresh_ciphertext, user_id, device_id FROM login_sessions"
                " WHERE refresh_ciphertext IS NOT NULL"
            )
            await conn.executemany(
                "UPDATE login_sessions SET refresh_ciphertext = ?"
                " WHERE user_id = ? AND device_id = ?",
                [(self._cipher.rotate(str(r[0])), r[1], r[2]) for r in sessions],
            )
            secrets = await conn.execute_fetchall(
                "SELECT payload_ciphertext, kind, secret_hash FROM login_secrets"
            )
            await conn.executemany(
                "UPDATE login_secrets SET payload_ciphertext = ?"
                " WHERE kind = ? AND secret_hash = ?",
                [(self._cipher.rotate(str(r[0])), r[1], r[2]) for r in secrets],
            )
            await conn.execute(
                "UPDATE store_meta SET value = ? WHERE name = ?",
                (self._cipher.seal_canary(), CANARY),
            )
        return len(updates)

    # -- the legacy login layer (bridge.store.records) -----------------------------

    async def put_secret(
        self, kind: str, secret: str, binding: str, payload: str, expires_at: int
    ) -> None:
        """Keep a one-time secret (see :class:`~bridge.store.Store`)."""
        hashed = digest(secret)
        sealed = self._cipher.seal(f"secret:{kind}", hashed, payload)
        async with self._writing() as conn:
            await conn.execute(
                "INSERT INTO login_secrets (kind, secret_hash, binding_hash, payload_ciphertext,"
                " expires_at) VALUES (?, ?, ?, ?, ?)",
                (kind, hashed, binding, sealed, expires_at),
            )

    async def take_secret(self, kind: str, secret: str, now: int) -> tuple[str, str] | None:
        """Use a one-time secret up: one DELETE ... RETURNING, in the file's write lock."""
        hashed = digest(secret)
        async with self._writing() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "DELETE FROM login_secrets WHERE kind = ? AND secret_hash = ?"
                    " RETURNING binding_hash, payload_ciphertext, expires_at",
                    (kind, hashed),
                )
            )
        if not rows or int(rows[0][2]) <= now:
            return None
        return str(rows[0][0]), self._unseal_secret(kind, hashed, str(rows[0][1]))

    def _unseal_secret(self, kind: str, hashed: str, sealed: str) -> str:
        return self._cipher.unseal(f"secret:{kind}", hashed, sealed)

    def _session(self, row: Iterable[Any]) -> LoginSession:
        user_id, device_id, sub, sid, sealed = tuple(row)
        refresh = None
        if sealed is not None:
            try:
                refresh = self._cipher.unseal(str(user_id), str(device_id), str(sealed))
            except Misbound:
                log.warning(
                    "stored refresh token of %s %s was sealed for another", user_id, device_id
                )
        return LoginSession(str(user_id), str(device_id), sub, sid, refresh)

    async def save_session(self, session: LoginSession) -> None:
        """Keep (replace) the session of its device."""
        refresh = session.refresh_token
        now = int(time.time())
        row = (
            session.user_id,
            session.device_id,
            session.sub,
            session.sid,
            None if refresh is None else digest(refresh),
            None
            if refresh is None
            else self._cipher.seal(session.user_id, session.device_id, refresh),
            now,
            now,
        )
        async with self._writing() as conn:
            await conn.execute(_SESSION_UPSERT, row)

    async def session_by_refresh(self, refresh_token: str) -> LoginSession | None:
        """The session whose client holds ``refresh_token`` now."""
        async with self._reading() as conn:
            row = await _first(
                conn,
                _SELECT_SESSIONS + "refresh_hash = ?",
                (digest(refresh_token),),
            )
        return None if row is None else self._session(row)

    async def replace_refresh(
        self, user_id: str, device_id: str, old: str, new: str | None
    ) -> bool:
        """Compare and set the session's refresh token."""
        sealed = None if new is None else self._cipher.seal(user_id, device_id, new)
        async with self._writing() as conn:
            cursor = await conn.execute(
                "UPDATE login_sessions SET refresh_hash = ?, refresh_ciphertext = ?,"
                " updated_at = ? WHERE user_id = ? AND device_id = ? AND refresh_hash = ?",
                (
                    None if new is None else digest(new),
                    sealed,
                    int(time.time()),
                    user_id,
                    device_id,
                    digest(old),
                ),
            )
            return cursor.rowcount == 1

    async def sessions(
        self, *, user_id: str | None = None, sid: str | None = None, sub: str | None = None
    ) -> list[LoginSession]:
        """The sessions matching every criterion given."""
        criteria = [(c, v) for c, v in (("user_id", user_id), ("sid", sid), ("sub", sub)) if v]
        if not criteria:
            raise ValueError("sessions() needs a criterion")
        where = " AND ".join(f"{column} = ?" for column, _ in criteria)
        async with self._reading() as conn:
            rows = await conn.execute_fetchall(
                _SELECT_SESSIONS + where + " ORDER BY user_id, device_id",
                tuple(v for _, v in criteria),
            )
        return [self._session(row) for row in rows]

    async def take_sessions(self, user_id: str, device_id: str | None) -> list[LoginSession]:
        """Delete and return the device's (or user's) sessions, in one statement."""
        async with self._writing() as conn:
            rows = await conn.execute_fetchall(
                "DELETE FROM login_sessions WHERE user_id = ? AND (? IS NULL OR device_id = ?)"
                " RETURNING user_id, device_id, sub, sid, refresh_ciphertext",
                (user_id, device_id, device_id),
            )
        return sorted((self._session(row) for row in rows), key=lambda x: x.device_id)

    async def add_logout_moment(
        self, user_id: str, device_id: str | None, not_before: int, token_hash: str | None = None
    ) -> LogoutMoment:
        """Record a moment; the other processes on the file find it when they next look."""
        async with self._writing() as conn:
            cursor = await conn.execute(
                "INSERT INTO logout_moments (user_id, device_id, not_before, token_hash)"
                " VALUES (?, ?, ?, ?)",
                (user_id, device_id, not_before, token_hash),
            )
            seq = cursor.lastrowid
        assert seq is not None
        return LogoutMoment(seq, user_id, device_id, not_before, token_hash)

    async def logout_moments_since(self, seq: int) -> list[LogoutMoment]:
        """The moments recorded after ``seq`` (writes are serialised: in order)."""
        async with self._reading() as conn:
            rows = await conn.execute_fetchall(
                "SELECT seq, user_id, device_id, not_before, token_hash FROM logout_moments"
                " WHERE seq > ? ORDER BY seq",
                (seq,),
            )
        return [LogoutMoment(int(r[0]), str(r[1]), r[2], int(r[3]), r[4]) for r in rows]

    async def follow_logout_moments(self, apply: ApplyMoments, *, interval: float) -> None:
        """Look for new moments every ``interval`` seconds (one indexed query)."""
        seq = 0
        while True:
            try:
                moments = await self.logout_moments_since(seq)
            except sqlite3.Error as e:
                log.warning("cannot read logout moments: %s", e)
            else:
                if moments:
                    apply(moments)
                    seq = moments[-1].seq
            await asyncio.sleep(interval)

    async def use_logout_token_id(self, jti: str, expires_at: int) -> bool:
        """Record a logout token's ID, once."""
        async with self._writing() as conn:
            cursor = await conn.execute(
                "INSERT INTO logout_token_ids (jti_hash, expires_at) VALUES (?, ?)"
                " ON CONFLICT (jti_hash) DO NOTHING",
                (digest(jti), expires_at),
            )
            return cursor.rowcount == 1

    async def sweep(self, now: int, moments_before: int) -> None:
        """Drop what has expired."""
        async with self._writing() as conn:
            await conn.execute("DELETE FROM login_secrets WHERE expires_at <= ?", (now,))
            await conn.execute("DELETE FROM logout_token_ids WHERE expires_at <= ?", (now,))
            await conn.execute("DELETE FROM logout_moments WHERE not_before < ?", (moments_before,))

    async def ping(self) -> None:
        """Raise unless the file answers a query."""
        await self._reader.execute_fetchall("SELECT 1")

    async def close(self) -> None:
        """Close both connections (and their threads)."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*self._cleanups, return_exceptions=True)
        await self._reader.close()
        await self._writer.close()
