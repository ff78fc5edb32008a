"""The store's schema, as an ordered list of migrations.

``schema_version`` holds one row per migration applied. At open, each backend
takes its cross-process lock (SQLite ``BEGIN IMMEDIATE``, PostgreSQL an
advisory lock), applies the missing steps in one transaction, and checks the
encryption canary in that same transaction. Steps are append-only: never edit
one that has shipped, add the next.

The SQL is portable (SQLite and PostgreSQL run the same text): ``TEXT``,
``BIGINT`` Unix seconds, ``ON CONFLICT`` upserts. A step that ever needs
dialect-specific SQL gets a ``postgres`` variant in :class:`Migration`.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.errors import ConfigError


@dataclass(frozen=True)
class Migration:
    """One schema step: the statements that take the store from ``version - 1``."""

    version: int
    summary: str
    sql: tuple[str, ...]
    postgres: tuple[str, ...] | None = None

    def statements(self, dialect: str) -> tuple[str, ...]:
        """The statements to run on ``dialect`` (``"sqlite"`` or ``"postgres"``)."""
        if dialect == "postgres" and self.postgres is not None:
            return self.postgres
        return self.sql


CREATE_SCHEMA_VERSION = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " version INTEGER PRIMARY KEY,"
    " applied_at BIGINT NOT NULL)"
)

# The legacy login layer's tables (bridge.login), the same SQL on both dialects.
_LOGIN_TABLES = (
    "CREATE TABLE login_secrets ("
    " kind TEXT NOT NULL,"
    " secret_hash TEXT NOT NULL,"
    " binding_hash TEXT NOT NULL,"
    " payload_ciphertext TEXT NOT NULL,"
    " expires_at BIGINT NOT NULL,"
    " PRIMARY KEY (kind, secret_hash))",
    "CREATE TABLE login_sessions ("
    " user_id TEXT NOT NULL,"
    " device_id TEXT NOT NULL,"
    " sub TEXT,"
    " sid TEXT,"
    " refresh_hash TEXT,"
    " refresh_ciphertext TEXT,"
    " created_at BIGINT NOT NULL,"
    " updated_at BIGINT NOT NULL,"
    " PRIMARY KEY (user_id, device_id))",
    "CREATE INDEX login_sessions_sid ON login_sessions (sid)",
    "CREATE INDEX login_sessions_sub ON login_sessions (sub)",
    "CREATE UNIQUE INDEX login_sessions_refresh ON login_sessions (refresh_hash)",
    "CREATE TABLE logout_token_ids (jti_hash TEXT PRIMARY KEY, expires_at BIGINT NOT NULL)",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "device tokens",
        (
            "CREATE TABLE device_tokens ("
            " user_id TEXT NOT NULL,"
            " device_id TEXT NOT NULL,"
            " token_ciphertext TEXT NOT NULL,"
            " created_at BIGINT NOT NULL,"
            " PRIMARY KEY (user_id, device_id))",
        ),
    ),
    Migration(
        2,
        "store_meta (encryption canary), device_tokens.updated_at",
        (
            "CREATE TABLE store_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "ALTER TABLE device_tokens ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0",
            "UPDATE device_tokens SET updated_at = created_at",
        ),
    ),
    Migration(
        3,
        "legacy login: one-time secrets, sessions, logout moments, logout token IDs",
        (
            *_LOGIN_TABLES,
            "CREATE TABLE logout_moments ("
            " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " user_id TEXT NOT NULL,"
            " device_id TEXT,"
            " not_before BIGINT NOT NULL)",
        ),
        postgres=(
            *_LOGIN_TABLES,
            "CREATE TABLE logout_moments ("
            " seq BIGSERIAL PRIMARY KEY,"
            " user_id TEXT NOT NULL,"
            " device_id TEXT,"
            " not_before BIGINT NOT NULL)",
        ),
    ),
    Migration(
        4,
        "logout moments of one device-less token",
        ("ALTER TABLE logout_moments ADD COLUMN token_hash TEXT",),
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version

# The store_meta row holding the encrypted canary.
CANARY = "encryption_canary"


def pending(current: int) -> tuple[Migration, ...]:
    """The migrations a store at version ``current`` still needs, in order.

    A store newer than this code is a start-up error: an older bridge must not
    write to a schema it does not know.
    """
    if current > SCHEMA_VERSION:
        raise ConfigError(
            "store",
            f"the store has schema version {current}, newer than this bridge knows "
            f"({SCHEMA_VERSION}): upgrade the bridge",
        )
    return MIGRATIONS[current:]
