"""What the legacy login layer keeps in the store (:mod:`bridge.login`).

Secrets are never kept as they are: one-time secrets (SSO ``state``, the
confirmation's form secret, ``loginToken``), refresh tokens and logout token
IDs are looked up by their SHA-256 digest, and whatever must be read back
(the payload of a secret, a refresh token to revoke) is sealed with the
store's keys, bound to its row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass


def digest(secret: str) -> str:
    """The hex SHA-256 digest a secret is stored and looked up by."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class LoginSession:
    """A device the bridge logged in through the issuer (SSO or password grant).

    ``sub`` and ``sid`` come from the ID token, for back-channel logout;
    ``refresh_token`` is the one the client holds now, so that logout can
    revoke it and ``/refresh`` knows it.
    """

    user_id: str
    device_id: str
    sub: str | None
    sid: str | None
    refresh_token: str | None


@dataclass(frozen=True)
class LogoutMoment:
    """Tokens of the user (``device_id`` None) or of one device issued at or before
    ``not_before`` (Unix seconds, compared with ``iat``) are refused.

    With ``token_hash`` (the :func:`digest` of one device-less token), only that
    token is refused, whenever it was issued; ``not_before`` is then the later of
    its logout and its ``exp`` (for the retention sweep).
    """

    seq: int
    user_id: str
    device_id: str | None
    not_before: int
    token_hash: str | None = None


# Called with moments as they arrive from the store (other instances' logouts too).
ApplyMoments = Callable[[list[LogoutMoment]], None]
