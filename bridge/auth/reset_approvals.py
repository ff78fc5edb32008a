"""Cross-signing reset approvals: MAS's ``allow_cross_signing_reset``, kept in memory.

Synapse opens a window of :data:`RESET_WINDOW` seconds (``REPLACEMENT_PERIOD_MS``,
ten minutes) on the user's current master key, in which that key may be
replaced without user-interactive auth; uploading a new master key closes it,
so one approval allows one replacement, and uploads that change only the
self- or user-signing keys leave it open (docs/mas-provisioning-api.md §3.3).
The bridge keeps the same rule per user, in this process only: an approval
given to one bridge instance is not seen by another.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Seconds an approval stays open (Synapse's REPLACEMENT_PERIOD_MS). Read at each
# approval, so tests can shorten it.
RESET_WINDOW = 600.0


class CrossSigningResetApprovals:
    """Per user: until when a master-key replacement is approved."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._open_until: dict[str, float] = {}

    def allow(self, user_id: str) -> None:
        """Open (or reopen) the user's window from now."""
        now = self._clock()
        # Expired approvals go here, so the dict stays as small as the open windows.
        for expired in [u for u, until in self._open_until.items() if until <= now]:
            del self._open_until[expired]
        self._open_until[user_id] = now + RESET_WINDOW

    def is_open(self, user_id: str) -> bool:
        """Whether a replacement is approved right now."""
        until = self._open_until.get(user_id)
        return until is not None and self._clock() < until

    def consume(self, user_id: str) -> float | None:
        """Close the window for a master-key replacement about to be made; its deadline
        (to :meth:`restore` if the replacement fails), or None if it was not open."""
        if not self.is_open(user_id):
            return None
        return self._open_until.pop(user_id)

    def restore(self, user_id: str, until: float) -> None:
        """Reopen a window :meth:`consume` closed, for a replacement that did not happen."""
        self._open_until.setdefault(user_id, until)

    def revoke(self, user_id: str) -> None:
        """Close the user's window (the user was deactivated)."""
        self._open_until.pop(user_id, None)
