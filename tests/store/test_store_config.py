"""The ``store`` config section, and the config errors that only opening the store finds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.config import StoreConfig, parse_config
from bridge.errors import ConfigError
from bridge.store import open_store
from tests.config.test_config import minimal
from tests.store.harness import KEY_A, KEY_B


def with_store(**store: Any) -> dict[str, Any]:
    return {**minimal(), "store": store}


def store_error(**store: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(with_store(**store))
    return info.value


def test_no_section_no_store() -> None:
    assert parse_config(minimal()).store is None
    assert parse_config({**minimal(), "store": None}).store is None


def test_sqlite_defaults() -> None:
    config = parse_config(with_store(encryption_keys=[KEY_A])).store
    assert config == StoreConfig(encryption_keys=(KEY_A,))
    assert config.kind == "sqlite"
    assert config.path == "matrix-oidc-bridge.db"
    assert config.dsn is None


def test_postgres_with_dsn_file(tmp_path: Path) -> None:
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text("postgresql://bridge:pw@db.example.org/bridge\n")
    config = parse_config(
        with_store(kind="postgres", dsn_file=str(dsn_file), encryption_keys=[KEY_A, KEY_B])
    ).store
    assert config is not None
    assert config.dsn == "postgresql://bridge:pw@db.example.org/bridge"
    assert config.encryption_keys == (KEY_A, KEY_B)


def test_keys_file_one_key_a_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "store_keys").write_text(f"{KEY_B}\n\n  {KEY_A}  \n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = parse_config(
        with_store(encryption_keys_file="${CREDENTIALS_DIRECTORY}/store_keys")
    ).store
    assert config is not None
    assert config.encryption_keys == (KEY_B, KEY_A)


def test_secrets_stay_out_of_repr() -> None:
    config = StoreConfig(encryption_keys=(KEY_A,), kind="postgres", dsn="postgresql://u:pw@h/db")
    assert KEY_A not in repr(config)
    assert "pw" not in repr(config)


@pytest.mark.parametrize(
    ("store", "key", "problem"),
    [
        ({}, "store.encryption_keys", "is required (or encryption_keys_file)"),
        ({"encryption_keys": []}, "store.encryption_keys", "must be a non-empty list"),
        ({"encryption_keys": KEY_A}, "store.encryption_keys", "must be a list"),
        ({"encryption_keys": [KEY_A], "encryption_keys_file": "/x"}, "store.encryption_keys",
         "give either"),
        ({"encryption_keys_file": "/nonexistent/keys"}, "store.encryption_keys_file",
         "cannot read"),
        ({"encryption_keys": [KEY_A], "kind": "mysql"}, "store.kind", "must be one of"),
        ({"encryption_keys": [KEY_A], "kind": "postgres"}, "store.dsn", "is required"),
        ({"encryption_keys": [KEY_A], "kind": "postgres", "dsn": "mysql://h/db"}, "store.dsn",
         "must be a postgresql:// URL"),
        ({"encryption_keys": [KEY_A], "kind": "postgres", "dsn": "postgresql://h/db",
          "path": "x.db"}, "store.path", "is only for kind: sqlite"),
        ({"encryption_keys": [KEY_A], "dsn": "postgresql://h/db"}, "store.dsn",
         "is only for kind: postgres"),
        ({"encryption_keys": [KEY_A], "pathh": "x.db"}, "store.pathh",
         "is not a known setting (did you mean path?)"),
    ],
)  # fmt: skip
def test_bad_store_section(store: dict[str, Any], key: str, problem: str) -> None:
    error = store_error(**store)
    assert error.key == key
    assert problem in error.problem


def test_a_bad_key_is_named_by_position_not_content() -> None:
    not_a_key = "c2hvcnQtYW5kLXNlY3JldA=="  # base64, but 16 bytes
    error = store_error(encryption_keys=[KEY_A, not_a_key])
    assert error.key == "store.encryption_keys"
    assert error.problem == "key 2 is not a Fernet key (32 bytes, urlsafe base64)"
    assert not_a_key not in str(error)
    assert error.__cause__ is None
    assert error.__suppress_context__


async def test_sqlite_directory_must_exist(tmp_path: Path) -> None:
    config = StoreConfig(encryption_keys=(KEY_A,), path=str(tmp_path / "missing" / "bridge.db"))
    with pytest.raises(ConfigError) as info:
        await open_store(config)
    assert info.value.key == "store.path"
    assert "does not exist" in info.value.problem


async def test_sqlite_file_is_private(tmp_path: Path) -> None:
    config = StoreConfig(encryption_keys=(KEY_A,), path=str(tmp_path / "bridge.db"))
    store = await open_store(config)
    await store.close()
    assert (tmp_path / "bridge.db").stat().st_mode & 0o077 == 0


async def test_unparseable_dsn_is_a_config_error_without_the_dsn() -> None:
    dsn = "postgresql://bridge:hunter2@db.example.org:notaport/bridge"
    config = StoreConfig(encryption_keys=(KEY_A,), kind="postgres", dsn=dsn)
    with pytest.raises(ConfigError) as info:
        await open_store(config)
    assert info.value.key == "store.dsn"
    assert "hunter2" not in str(info.value)
    assert info.value.__cause__ is None
