"""How a request is presented to the homeserver as a given user and device."""

from __future__ import annotations

from typing import Protocol

from bridge.auth.identity import Identity


class IdentityStrategy(Protocol):
    """A way of acting as (user, device) on the homeserver (DESIGN.md §4)."""

    async def prepare(self, identity: Identity) -> None:
        """Make sure the user and device exist on the homeserver (cached)."""

    def credentials(self, identity: Identity) -> tuple[str, list[tuple[str, str]]]:
        """The ``Authorization`` header value and the query parameters to forward with."""
