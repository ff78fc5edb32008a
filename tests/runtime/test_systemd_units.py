"""The systemd units: what the bridge needs of them, and their hardening as
``systemd-analyze security`` scores it (target: exposure under 2.0)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
SERVICE = UNITS / "matrix-oidc-bridge.service"
TEMPLATE = UNITS / "matrix-oidc-bridge@.service"


def directives(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.parametrize("unit", [SERVICE, TEMPLATE], ids=lambda u: u.name)
def test_the_unit_says_what_the_bridge_does(unit: Path) -> None:
    found = directives(unit)
    assert found["Type"] == ["notify"]
    assert found["NotifyAccess"] == ["main"]
    assert found["WatchdogSec"]
    assert found["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert found["RestartPreventExitStatus"] == ["11"]
    assert found["DynamicUser"] == ["yes"]
    assert found["KillMode"] == ["mixed"]
    assert {c.split(":", 1)[0] for c in found["LoadCredential"]} >= {
        "as_token",
        "hs_token",
        "issuer_client_secret",
    }
    for hardening in ("ProtectSystem", "NoNewPrivileges", "PrivateTmp", "RestrictAddressFamilies"):
        assert hardening in found
    assert "@system-service" in found["SystemCallFilter"]


def test_the_template_names_its_instance() -> None:
    found = directives(TEMPLATE)
    assert found["ExecStart"] == [
        "/usr/bin/matrix-oidc-bridge serve -c /etc/matrix-oidc-bridge/%i.yaml"
    ]
    assert found["StateDirectory"] == ["matrix-oidc-bridge/%i"]
    assert all("/%i/" in c for c in found["LoadCredential"])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="make install brings systemd")
@pytest.mark.parametrize("unit", [SERVICE, TEMPLATE], ids=lambda u: u.name)
def test_exposure_is_under_2(unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) < 2.0
