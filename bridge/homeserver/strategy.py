"""How a request is presented to the homeserver as a given user and device."""

from __future__ import annotations

from typing import Protocol

from bridge.auth.identity import Identity


class IdentityStrategy(Protocol):
    """A way of acting as (user, device) on the homeserver (DESIGN.md §4).

    ``appservice_power`` says whether forwarded requests carry the
    appservice's identity. Then the homeserver relaxes checks it would make
    for a normal user, and the bridge makes them instead
    (:mod:`bridge.homeserver.privileges`, transaction-ID rewriting).
    """

    appservice_power: bool

    async def prepare(self, identity: Identity, *, write: bool = False) -> None:
        """Make sure the user and device exist on the homeserver (cached), and that the
        user may act (``write``: a request that changes something)."""

    def credentials(self, identity: Identity) -> tuple[str, list[tuple[str, str]]]:
        """The ``Authorization`` header value and the query parameters to forward with."""

    async def heal(self, identity: Identity, failed_authorization: str) -> None:
        """The homeserver lost the user, device or token behind the bridge's back:
        forget what was known and provision again (a no-op if another request
        already did since ``failed_authorization`` was used)."""
