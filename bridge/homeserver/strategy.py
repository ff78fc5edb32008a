"""How a request is presented to the homeserver as a given user and device."""

from __future__ import annotations

from typing import Protocol

from bridge.auth.identity import Identity


class IdentityStrategy(Protocol):
    """A way of acting as (user, device) on the homeserver (docs/design.md, "Homeserver face").

    ``appservice_power`` says whether forwarded requests carry the
    appservice's identity. Then the homeserver relaxes checks it would make
    for a normal user, and the bridge makes them instead
    (:mod:`bridge.homeserver.privileges`, transaction-ID rewriting).

    With ``issuer.kind: mas`` nothing is provisioned on first sight: MAS
    creates users and devices through the provisioning API (the device
    operations below), and a token whose device does not exist is refused
    (401 ``M_UNKNOWN_TOKEN``), as Synapse refuses it in MAS mode.
    """

    appservice_power: bool

    async def prepare(self, identity: Identity, *, write: bool = False) -> None:
        """Make sure the user and device exist on the homeserver (cached), and that the
        user may act (``write``: a request that changes something)."""

    def credentials(self, identity: Identity) -> tuple[str, list[tuple[str, str]]]:
        """The ``Authorization`` header value and the query parameters to forward with."""

    def appservice_credentials(self, identity: Identity) -> tuple[str, list[tuple[str, str]]]:
        """Credentials that carry the appservice's power for the user, for the one request
        the bridge has authorised itself (an approved cross-signing reset)."""

    async def heal(self, identity: Identity, failed_authorization: str) -> None:
        """The homeserver lost the user, device or token behind the bridge's back:
        forget what was known and provision again (a no-op if another request
        already did since ``failed_authorization`` was used)."""

    async def upsert_device(self, identity: Identity, display_name: str | None) -> bool:
        """Create the device, or rename it when ``display_name`` is given; whether it
        was created."""

    async def rename_device(self, identity: Identity, display_name: str) -> bool:
        """Rename an existing device; False when the user has no such device."""

    async def delete_device(self, identity: Identity) -> None:
        """Delete the device and everything the bridge kept for it (unknown: a no-op)."""

    async def devices_of(self, user_id: str) -> set[str]:
        """The IDs of the user's devices on the homeserver."""

    async def forget_user(self, user_id: str) -> None:
        """The homeserver removed the user's devices (deactivation): drop what the
        bridge remembers of them."""
