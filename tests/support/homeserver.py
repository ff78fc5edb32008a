"""What the test stack's homeservers (Synapse, Dendrite) have in common: loopback JSON
requests, log tails, stopping a process, and an admin user made through the
shared-secret registration API (which both implement the same way)."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never use a proxy


def tail(path: Path, lines: int) -> str:
    """Return the last ``lines`` lines of ``path``, or a note if it does not exist."""
    if not path.exists():
        return f"<{path.name} does not exist>"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def request_json(
    method: str, url: str, body: dict[str, Any] | None = None, token: str | None = None
) -> dict[str, Any]:
    """Send a JSON request over loopback and return the decoded JSON answer."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with _OPENER.open(req, timeout=30) as resp:
            result: dict[str, Any] = json.load(resp)
            return result
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise RuntimeError(f"{method} {url} -> {exc.code}: {detail}") from exc


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, wait up to 10 s, then SIGKILL."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def register_admin(base_url: str, shared_secret: str, localpart: str) -> tuple[str, str]:
    """Create an admin user with the shared-secret API; return (user_id, access_token)."""
    url = f"{base_url}/_synapse/admin/v1/register"
    nonce = str(request_json("GET", url)["nonce"])
    password = secrets.token_urlsafe(24)
    mac = hmac.new(shared_secret.encode(), digestmod=hashlib.sha1)
    mac.update(b"\x00".join(s.encode() for s in (nonce, localpart, password, "admin")))
    answer = request_json(
        "POST",
        url,
        {
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": True,
            "mac": mac.hexdigest(),
        },
    )
    return str(answer["user_id"]), str(answer["access_token"])
