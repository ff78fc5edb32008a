"""What a JWS header (RFC 7515) must be before the issuer's key for its ``kid`` and
``alg`` is looked up (:class:`bridge.issuer.jwks.SigningKeys`), for access tokens
(:mod:`bridge.auth.jwt_access`) and ID and logout tokens (:mod:`bridge.login.jwts`):
``alg`` one the caller accepts; no ``crit`` (RFC 7515 §4.1.11: nothing is
understood); ``kid``, when present, a string. Each caller refuses in its own words.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class JwtRefused(Exception):
    """A JWT that must not be believed; the message says why."""


@dataclass(frozen=True)
class HeaderRules:
    """The algorithms accepted, and the caller's refusals (``bad_alg`` is formatted
    with the token's ``alg``)."""

    algorithms: frozenset[str]
    bad_alg: str
    crit: str
    bad_kid: str

    def check(self, header: Mapping[str, Any]) -> tuple[str, str | None]:
        """The token's ``alg`` and ``kid`` (JwtRefused if the header is refused)."""
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise JwtRefused(self.bad_alg.format(alg=alg))
        if "crit" in header:
            raise JwtRefused(self.crit)
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise JwtRefused(self.bad_kid)
        return alg, kid
