"""The durable store: per (user, device), the homeserver token of ``device_login``.

Two backends behind one :class:`Store` protocol: SQLite (one host; several
processes may share the file) and PostgreSQL (several hosts). Tokens are
encrypted at rest (:mod:`bridge.store.crypto`); the schema is migrated at open
(:mod:`bridge.store.schema`).

Exactly one bridge instance logs a device in::

    async with store.login_lock(user_id, device_id):
        token = await store.device_token(user_id, device_id)
        if token is None:
            token = await login()  # appservice POST /login
            await store.save_device_token(user_id, device_id, token)

Inside the block, the store's own calls run in the lock's transaction
(:mod:`bridge.store.lock`): the block commits when it ends normally and
rolls back when it raises. It is not re-entrant, and waiting for it longer
than :data:`LOCK_TIMEOUT` raises :class:`TimeoutError`.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

from bridge.config import StoreConfig
from bridge.errors import ConfigError
from bridge.store.crypto import TokenCipher
from bridge.store.lock import LOCK_TIMEOUT
from bridge.store.postgres import PostgresStore
from bridge.store.records import ApplyMoments, LoginSession, LogoutMoment
from bridge.store.sqlite import SqliteStore

__all__ = ["LOCK_TIMEOUT", "LoginSession", "LogoutMoment", "Store", "open_store"]


class Store(Protocol):
    """Homeserver tokens per (user, device), encrypted at rest."""

    async def device_token(self, user_id: str, device_id: str) -> str | None:
        """The decrypted homeserver token of the device, or None if none is stored.

        A stored token that no configured key decrypts raises
        :class:`~bridge.errors.ConfigError`; one sealed for another device
        (a tampered row) is logged and treated as missing.
        """
        ...

    def login_lock(self, user_id: str, device_id: str) -> AbstractAsyncContextManager[None]:
        """A lock on the device held across processes and hosts sharing the store."""
        ...

    async def save_device_token(self, user_id: str, device_id: str, token: str) -> None:
        """Encrypt and store the device's token, replacing any previous one."""
        ...

    async def delete_device(self, user_id: str, device_id: str) -> None:
        """Forget the device (nothing happens if it is unknown)."""
        ...

    async def devices_of(self, user_id: str) -> list[str]:
        """The IDs of the user's devices that have a stored token, sorted."""
        ...

    async def rotate_key(self) -> int:
        """Re-encrypt every token with the first key; return how many there were."""
        ...

    # The legacy login layer (bridge.login): see bridge.store.records.

    async def put_secret(
        self, kind: str, secret: str, binding: str, payload: str, expires_at: int
    ) -> None:
        """Keep a one-time ``secret`` of ``kind`` with its ``payload`` (sealed) and the
        digest of what it is bound to (a browser cookie), until ``expires_at``."""
        ...

    async def take_secret(self, kind: str, secret: str, now: int) -> tuple[str, str] | None:
        """Use a one-time secret up, atomically (also across instances): its
        (binding, payload), or None if it is unknown, used or expired."""
        ...

    async def save_session(self, session: LoginSession) -> None:
        """Keep (replace) the session of its device."""
        ...

    async def session_by_refresh(self, refresh_token: str) -> LoginSession | None:
        """The session whose client holds ``refresh_token`` now."""
        ...

    async def replace_refresh(
        self, user_id: str, device_id: str, old: str, new: str | None
    ) -> bool:
        """Swap the session's refresh token, only if it is still ``old`` (a compare
        and set: two refreshes with one token cannot both win)."""
        ...

    async def sessions(
        self, *, user_id: str | None = None, sid: str | None = None, sub: str | None = None
    ) -> list[LoginSession]:
        """The sessions matching every criterion given (at least one)."""
        ...

    async def take_sessions(self, user_id: str, device_id: str | None) -> list[LoginSession]:
        """Delete the device's session (``device_id`` None: every session of the user) and
        return what was deleted, atomically: a refresh token swapped in meanwhile is the
        one returned, never lost."""
        ...

    async def add_logout_moment(
        self, user_id: str, device_id: str | None, not_before: int, token_hash: str | None = None
    ) -> LogoutMoment:
        """Record a logout moment and announce it to every instance."""
        ...

    async def logout_moments_since(self, seq: int) -> list[LogoutMoment]:
        """The moments recorded after ``seq``, oldest first."""
        ...

    async def follow_logout_moments(self, apply: ApplyMoments, *, interval: float) -> None:
        """Run forever: hand every moment recorded (by any instance) to ``apply``, as
        soon as it is known (PostgreSQL: LISTEN/NOTIFY; SQLite: every ``interval``)."""
        ...

    async def use_logout_token_id(self, jti: str, expires_at: int) -> bool:
        """Record a logout token's ``jti``; False if it was already used."""
        ...

    async def sweep(self, now: int, moments_before: int) -> None:
        """Drop expired secrets and logout token IDs, and moments older than
        ``moments_before``."""
        ...

    async def ping(self) -> None:
        """Raise unless the database answers (readiness)."""
        ...

    async def close(self) -> None:
        """Release connections; calling it again does nothing."""
        ...


async def open_store(config: StoreConfig) -> Store:
    """Open (create and migrate if needed) the store ``config`` describes.

    Raises :class:`~bridge.errors.ConfigError` when the keys cannot decrypt the
    store, when its schema is newer than this code, or when the SQLite file's
    directory does not exist.
    """
    cipher = TokenCipher(config.encryption_keys)
    if config.kind == "sqlite":
        return await SqliteStore.open(config.path, cipher)
    if config.dsn is None:
        raise ConfigError("store.dsn", "is required with kind: postgres")
    return await PostgresStore.open(config.dsn, cipher)
