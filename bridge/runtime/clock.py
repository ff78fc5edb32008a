"""The clock the bridge reads: wall time and monotonic time in one injectable object.

Everything that expires (cached sessions, JWKS cooldowns, login secrets, logout
moments) asks a :class:`Clock` instead of :mod:`time`, so that tests advance a
fake clock instead of sleeping past a TTL.
"""

from __future__ import annotations

import time as _time
from typing import Protocol


class Clock(Protocol):
    """Wall time (seconds since the epoch: ``exp``, ``iat``, store expiries) and
    monotonic time (seconds from an arbitrary start: TTLs, cooldowns)."""

    def time(self) -> float:
        """Seconds since the epoch, as :func:`time.time`."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start that never goes back, as :func:`time.monotonic`."""
        ...


class SystemClock:
    """The real clock."""

    time = staticmethod(_time.time)
    monotonic = staticmethod(_time.monotonic)


SYSTEM_CLOCK: Clock = SystemClock()
