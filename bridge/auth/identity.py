"""Turning an active token's claims into a Matrix identity (docs/design.md, "Token → identity")."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NewType

from bridge.errors import Forbidden, UnknownToken

UserID = NewType("UserID", str)
DeviceID = NewType("DeviceID", str)

# Synapse's scope for its admin API (as Synapse reads it with MAS).
ADMIN_SCOPE = "urn:synapse:admin:*"
API_SCOPE = "urn:matrix:client:api:*"
API_SCOPES = frozenset({API_SCOPE, "urn:matrix:org.matrix.msc2967.client:api:*"})
DEVICE_SCOPE_PREFIXES = (
    "urn:matrix:client:device:",
    "urn:matrix:org.matrix.msc2967.client:device:",
)

# The user-ID grammar for new users (spec appendix "User Identifiers").
LOCALPART = re.compile(r"[a-z0-9._=/+-]+")
# Device IDs travel in query strings and paths (percent-encoded); allow the
# characters an OAuth scope token can carry, as MAS does, and nothing else.
DEVICE_ID = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@/-]{1,255}")
_MAX_USER_ID = 255


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request is from, as the homeserver must see it.

    ``device_id`` is None for a token that grants the client API without naming
    a device: it acts as the user alone, as Synapse lets such a token act in MAS
    mode.
    """

    user_id: UserID
    device_id: DeviceID | None
    localpart: str
    # The token grants Synapse's admin API scope (urn:synapse:admin:*). Not part of
    # the identity's equality: the same device is the same device either way.
    admin: bool = field(default=False, compare=False)
    # The token's ``iat`` (Unix seconds) where the issuer said, for the logout
    # moments (bridge.auth.logout_moments). Not part of the identity either.
    issued_at: float | None = field(default=None, compare=False)

    @property
    def device(self) -> DeviceID:
        """The device, where one is certain (MAS's provisioning calls always name one)."""
        if self.device_id is None:
            raise AssertionError("a device-less identity where a device is needed")
        return self.device_id


def _refused(outcome: str, message: str) -> UnknownToken:
    """An UnknownToken naming its ``outcome`` (bridge.ops.metrics.VALIDATION_OUTCOMES)."""
    error = UnknownToken(message)
    error.outcome = outcome
    return error


def device_scope(device_id: str, *, unstable: bool = False) -> str:
    """The scope that names ``device_id`` (stable prefix unless ``unstable``)."""
    return DEVICE_SCOPE_PREFIXES[1 if unstable else 0] + device_id


def identity_from_claims(
    claims: Mapping[str, object],
    *,
    server_name: str,
    localpart_claim: str,
    reserved_localparts: frozenset[str] = frozenset(),
) -> Identity:
    """Map an active token's claims (introspection or JWT) to an :class:`Identity`.

    The scope (``scope``, space-separated, or ``scp``, a list, as some issuers
    put it in JWTs) must grant the client API; the device is the ``device_id``
    claim (MAS with ``X-MAS-Supports-Device-Id``), else the one device scope;
    a token with no device scope at all has no device. Two device scopes are
    refused.
    Raises :class:`UnknownToken` for a token that cannot act on the client API,
    and :class:`Forbidden` for a user the bridge must never act as (its own
    appservice sender: requests as that user carry the appservice's powers).
    """
    scopes = granted_scopes(claims)
    if not scopes & API_SCOPES:
        raise _refused("missing_scope", "Token does not grant access to the Matrix client API")

    claimed_device = claims.get("device_id")
    device: str | None
    if isinstance(claimed_device, str) and claimed_device:
        device = claimed_device
    else:
        devices = {
            s[len(prefix) :]
            for s in scopes
            for prefix in DEVICE_SCOPE_PREFIXES
            if s.startswith(prefix)
        }
        if len(devices) > 1:
            raise _refused("bad_device", "Token must not name more than one device in its scope")
        device = devices.pop() if devices else None
    if device is not None and not DEVICE_ID.fullmatch(device):
        raise _refused("bad_device", "Token names an invalid device ID")

    localpart = claims.get(localpart_claim)
    if not isinstance(localpart, str) or not LOCALPART.fullmatch(localpart):
        raise _refused("bad_localpart", "Token does not carry a valid Matrix localpart")
    if localpart in reserved_localparts:
        reserved = Forbidden("This account is reserved for the gateway and cannot be used")
        reserved.outcome = "reserved_user"
        raise reserved
    user_id = f"@{localpart}:{server_name}"
    if len(user_id) > _MAX_USER_ID:
        raise _refused("bad_localpart", "Token's user ID is too long")
    iat = claims.get("iat")
    return Identity(
        UserID(user_id),
        None if device is None else DeviceID(device),
        localpart,
        admin=ADMIN_SCOPE in scopes,
        issued_at=float(iat)
        if isinstance(iat, int | float) and not isinstance(iat, bool)
        else None,
    )


def granted_scopes(claims: Mapping[str, object]) -> set[str]:
    """The scopes a token grants: ``scope``, a space-separated string (RFC 6749, 7662,
    9068); without it, ``scp``, a list (as Entra and Okta write JWTs) or a string."""
    scope = claims.get("scope")
    if isinstance(scope, str):
        return set(scope.split())
    scp = claims.get("scp") if scope is None else None
    if isinstance(scp, str):
        return set(scp.split())
    if isinstance(scp, list) and all(isinstance(s, str) for s in scp):
        return set(scp)
    return set()
