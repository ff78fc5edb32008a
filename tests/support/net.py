"""Loopback helpers shared by the test stack: free ports and readiness polling."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(
    url: str, *, timeout: float = 60.0, is_alive: Callable[[], bool] | None = None
) -> None:
    """Poll ``url`` (loopback only) until it answers any HTTP status, or raise TimeoutError.

    ``is_alive`` may be a callable returning False once the server process has died,
    so that a crashed server fails fast instead of after the whole timeout.
    """
    if not url.startswith(("http://127.0.0.1", "http://[::1]")):
        raise ValueError(f"test stack talks to loopback only, not {url}")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            pass
        if is_alive is not None and not is_alive():
            raise RuntimeError(f"server for {url} exited before it was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready after {timeout}s")
        time.sleep(0.1)
