"""The command line: ``check-config`` and ``generate-registration``."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.fernet import Fernet

from bridge.cli.main import EXIT_CONFIG, main
from bridge.config import load_config
from bridge.store import open_store

ROOT = Path(__file__).resolve().parents[2]

GOOD: dict[str, Any] = {
    "server_name": "example.org",
    "public_baseurl": "https://matrix.example.org",
    "homeserver": {"url": "http://127.0.0.1:8008", "strategy": "masquerade"},
    "appservice": {
        "as_token": "as-secret",
        "hs_token": "hs-secret",
        "sender_localpart": "oidc-bridge",
    },
    "issuer": {
        "issuer": "https://auth.example.org/",
        "introspection": {"auth": "mas_shared_secret", "client_secret": "shared"},
    },
}


def bridge_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    return path


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    doc = {**GOOD, "homeserver": {"url": "ftp://127.0.0.1"}}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_check_config_broken_exits_11(broken: Path) -> None:
    result = bridge_cli("check-config", "-c", str(broken))
    assert result.returncode == EXIT_CONFIG == 11
    assert "homeserver.url" in result.stderr


def test_check_config_good_exits_0(good: Path) -> None:
    result = bridge_cli("check-config", "-c", str(good))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_generate_registration(good: Path, tmp_path: Path) -> None:
    output = tmp_path / "reg.yaml"
    result = bridge_cli("generate-registration", "-c", str(good), "-o", str(output))
    assert result.returncode == 0, result.stderr

    assert "url: null" in output.read_text().splitlines()
    reg = yaml.safe_load(output.read_text())
    assert reg["url"] is None
    assert reg["as_token"] == "as-secret"
    assert reg["hs_token"] == "hs-secret"
    assert reg["sender_localpart"] == "oidc-bridge"
    assert reg["io.element.msc4190"] is True  # masquerade creates devices (MSC4190)
    # The homeserver's per-user rate limits apply to the bridge's users (AS-10).
    assert reg["rate_limited"] is True
    [aliases] = reg["namespaces"]["aliases"]
    assert aliases["exclusive"] is False
    assert re.match(aliases["regex"], "#room:example.org")
    assert not re.search(aliases["regex"], "#room:evil.org")
    [users] = reg["namespaces"]["users"]
    assert users["exclusive"] is False
    assert re.match(users["regex"], "@alice:example.org")
    assert not re.search(users["regex"], "@alice:evil.org")
    assert not re.search(users["regex"], "@alice:example.com")
    assert stat.S_IMODE(output.stat().st_mode) == 0o600


def test_registration_regex_is_anchored(good: Path, tmp_path: Path) -> None:
    output = tmp_path / "reg.yaml"
    assert main(["generate-registration", "-c", str(good), "-o", str(output)]) == 0
    regex = yaml.safe_load(output.read_text())["namespaces"]["users"][0]["regex"]
    assert not re.match(regex, "@alice:example.org.evil")
    assert not re.search(regex, "@alice:example.org.evil")


def test_regenerated_registration_is_private(good: Path, tmp_path: Path) -> None:
    output = tmp_path / "reg.yaml"
    output.write_text("old\n")
    os.chmod(output, 0o644)
    assert main(["generate-registration", "-c", str(good), "-o", str(output)]) == 0
    assert "as-secret" in output.read_text()
    assert stat.S_IMODE(output.stat().st_mode) == 0o600


def test_main_config_error(broken: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "-c", str(broken)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "config error" in err
    assert "homeserver.url" in err


def test_main_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "-c", str(tmp_path / "nope.yaml")]) == EXIT_CONFIG
    assert "(file)" in capsys.readouterr().err


def test_main_config_error_does_not_print_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = {**GOOD, "appservice": {"as_token": "same-secret", "hs_token": "same-secret"}}
    path = tmp_path / "same.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["check-config", "-c", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "appservice.hs_token" in err
    assert "same-secret" not in err


def test_main_requires_config_option() -> None:
    with pytest.raises(SystemExit) as info:
        main(["check-config"])
    assert info.value.code == 2


def test_device_login_registration_allows_appservice_login(good: Path, tmp_path: Path) -> None:
    """Synapse refuses appservice login to registrations with io.element.msc4190."""
    doc = {
        **GOOD,
        "homeserver": {"url": "http://127.0.0.1:8008", "strategy": "device_login"},
        "store": {"encryption_keys": ["V0QrPSHhbWzrxAHdjSGt1BnqANpA1hTxyrQFjh0u7mU="]},
    }
    config = tmp_path / "dl.yaml"
    config.write_text(yaml.safe_dump(doc))
    output = tmp_path / "reg.yaml"
    result = bridge_cli("generate-registration", "-c", str(config), "-o", str(output))
    assert result.returncode == 0, result.stderr
    reg = yaml.safe_load(output.read_text())
    assert "io.element.msc4190" not in reg
    assert reg["rate_limited"] is True


async def test_rotate_key_re_encrypts_the_store_with_the_first_key(tmp_path: Path) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()

    def config_with(*keys: str) -> Path:
        doc = {
            **GOOD,
            "homeserver": {"url": "http://127.0.0.1:8008", "strategy": "device_login"},
            "store": {"path": str(tmp_path / "bridge.db"), "encryption_keys": list(keys)},
        }
        path = tmp_path / f"bridge-{len(keys)}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    store = await open_store(load_config(config_with(old)).store)  # type: ignore[arg-type]
    await store.save_device_token("@alice:example.org", "DEVA", "syt_secret_device_token")
    await store.close()

    result = bridge_cli("rotate-key", "-c", str(config_with(new, old)))
    assert result.returncode == 0, result.stderr
    assert "re-encrypted 1 device tokens" in result.stdout

    # The old key can go now; without rotation, the new key alone could not read it.
    store = await open_store(load_config(config_with(new)).store)  # type: ignore[arg-type]
    try:
        assert await store.device_token("@alice:example.org", "DEVA") == "syt_secret_device_token"
    finally:
        await store.close()


def test_rotate_key_without_a_store_is_a_config_error(good: Path) -> None:
    result = bridge_cli("rotate-key", "-c", str(good))
    assert result.returncode == 11
    assert "store" in result.stderr


async def test_serve_with_a_key_that_cannot_read_the_store_exits_11(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    store = await open_store(
        load_config(_store_config(tmp_path, path, Fernet.generate_key().decode())).store  # type: ignore[arg-type]
    )
    await store.save_device_token("@alice:example.org", "DEVA", "syt_secret")
    await store.close()

    result = bridge_cli(
        "serve", "-c", str(_store_config(tmp_path, path, Fernet.generate_key().decode()))
    )
    assert result.returncode == 11, result.stderr
    assert "store.encryption_keys" in result.stderr
    assert "syt_secret" not in result.stderr + result.stdout


def _store_config(tmp_path: Path, db: Path, key: str) -> Path:
    doc = {
        **GOOD,
        # Loopback only, and nothing listens there: nothing is asked of either.
        "issuer": {**GOOD["issuer"], "issuer": "http://127.0.0.1:9/"},
        "homeserver": {
            "url": "http://127.0.0.1:9",
            "strategy": "device_login",
            "probe_at_start": False,
        },
        "listen": {"host": "127.0.0.1", "port": 0},
        "ops": {"enabled": False},
        "store": {"path": str(db), "encryption_keys": [key]},
    }
    path = tmp_path / f"serve-{key[:6]}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("change", "line"),
    [
        # a misspelt key: unknown, with the closest name (not "url is required")
        (
            {"homeserver": {"urll": "http://127.0.0.1:8008", "strategy": "masquerade"}},
            "homeserver.urll: is not a known setting (did you mean url?)",
        ),
        # a wrong type
        ({"listen": {"port": "8008"}}, "listen.port: must be an integer"),
        # a missing required key
        (
            {"issuer": {"issuer": "https://auth.example.org/"}},
            "issuer.introspection: is required",
        ),
        # a bad secret file
        (
            {"appservice": {"as_token_file": "/nonexistent/as_token", "hs_token": "h"}},
            "appservice.as_token_file: cannot read /nonexistent/as_token: "
            "No such file or directory",
        ),
    ],
)
def test_each_config_mistake_is_one_line_naming_the_key_and_exit_11(
    tmp_path: Path, change: dict[str, Any], line: str
) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump({**GOOD, **change}))
    result = bridge_cli("check-config", "-c", str(path))
    assert result.returncode == 11
    assert result.stderr.splitlines() == [f"matrix-oidc-bridge: config error: {line}"]
