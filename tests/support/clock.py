"""A clock that stands still until a test moves it (a :class:`bridge.runtime.clock.Clock`).

Pass it to ``create_app(config, clock=...)`` or to the object under test, and call
:meth:`FakeClock.advance` where a test would otherwise sleep past a TTL or an expiry.
The event loop keeps the real clock: only what reads this one sees time pass.
"""

from __future__ import annotations


class FakeClock:
    """Wall and monotonic time that move together, and only by :meth:`advance`.

    ``start_time``: the wall time (Unix seconds) it shows at first; tokens the test
    mints must be dated by :meth:`time`, not by :func:`time.time`, unless it
    starts at the real time (``FakeClock(time.time())``: for tests whose issuer,
    fake or real, dates tokens by the real clock).
    """

    # Where monotonic time starts: not 0, so that "never" and "at the start" differ.
    MONOTONIC_START = 1000.0

    def __init__(self, start_time: float = 1_800_000_000.0) -> None:
        self._start_time = start_time
        self._elapsed = 0.0

    def time(self) -> float:
        """Seconds since the epoch."""
        return self._start_time + self._elapsed

    def monotonic(self) -> float:
        """Seconds from an arbitrary start."""
        return self.MONOTONIC_START + self._elapsed

    def advance(self, seconds: float) -> None:
        """Move both clocks on by ``seconds`` (never back)."""
        if seconds < 0:
            raise ValueError("a clock never goes back")
        self._elapsed += seconds
