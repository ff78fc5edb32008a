"""``make demo`` keeps working: the demo's two logins and whoamis succeed end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_logs_in_through_the_bridge() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.demo", "--once"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"user_id": "@demo:bridge.test"' in done.stdout
    assert '"device_id": "DEMODEVICE"' in done.stdout
    # The classic client's login, through the bridge's login layer.
    assert '"user_id": "@classic:bridge.test"' in done.stdout
