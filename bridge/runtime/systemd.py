"""systemd's notification protocol (``sd_notify``), by hand: one datagram per message.

``NOTIFY_SOCKET`` names a Unix datagram socket: a path, or an abstract one
when it starts with ``@``. Without it (not under ``Type=notify``) every call
does nothing. Messages the bridge sends: ``READY=1`` once its listeners
accept connections, ``RELOADING=1`` (with ``MONOTONIC_USEC``) then
``READY=1`` around a reload, ``STOPPING=1`` when a stop begins, and
``WATCHDOG=1`` every half ``WATCHDOG_USEC`` while the event loop runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

log = logging.getLogger("bridge.runtime.systemd")

NOTIFY_ENV = "NOTIFY_SOCKET"


class Notifier:
    """Sends to the socket in ``NOTIFY_SOCKET`` (when set at construction)."""

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get(NOTIFY_ENV) if address is None else address
        self._address: str | None = None
        if address:
            # "@name": Linux's abstract namespace, a leading NUL byte.
            self._address = "\0" + address[1:] if address.startswith("@") else address

    def send(self, *fields: str) -> None:
        """One notification (``KEY=value`` fields); failures are logged, never raised."""
        if self._address is None:
            return
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError as e:
            log.warning("cannot notify systemd: %s", e.strerror or e)

    def ready(self) -> None:
        self.send("READY=1", "STATUS=serving")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=draining requests in flight")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), when systemd asks
        this process for them."""
        if self._address is None:
            return None
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 2_000_000

    async def watchdog(self) -> None:
        """Ping the watchdog forever (a task): pings stop when the event loop hangs."""
        interval = self.watchdog_interval()
        if interval is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)


def without_notify_socket(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a child process that must not notify systemd (a worker: systemd
    accepts the main process's notifications only)."""
    return {k: v for k, v in env.items() if k not in (NOTIFY_ENV, "WATCHDOG_USEC", "WATCHDOG_PID")}
