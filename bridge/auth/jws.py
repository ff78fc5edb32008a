"""JWS (RFC 7515) for the bridge: the signature algorithms it ever accepts, and what a
header must be before the issuer's key for its ``kid`` and ``alg`` is looked up
(:class:`bridge.issuer.jwks.SigningKeys`).

:data:`ASYMMETRIC_ALGORITHMS` is the one definition of the algorithms: what
``issuer.jwt.algorithms`` and ``login.signing_algorithms`` may name (the config
refuses anything else), and, by key family, which keys of the issuer's JWKS may
verify each (:func:`bridge.issuer.jwks.fits`). Never ``none`` nor an HMAC
(``HS*``): a shared secret the issuer also publishes is no signature. This module
imports nothing heavy, so that the config can read it.

:class:`HeaderRules` is the header check for access tokens
(:mod:`bridge.auth.jwt_access`) and ID and logout tokens (:mod:`bridge.login.jwts`):
``alg`` one the caller accepts; no ``crit`` (RFC 7515 §4.1.11: nothing is
understood); ``kid``, when present, a string. Each caller refuses in its own words.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

# The key families (RFC 7518 §3.3-3.5, RFC 8037 §3.1), each with what verifies it.
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
"""Verified by an RSA key (``kty`` RSA)."""
EC_CURVES: Mapping[str, str] = MappingProxyType(
    {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
)
"""Each ECDSA algorithm, and the one curve of the EC key (``kty`` EC) that verifies it."""
OKP_CURVES = frozenset({"Ed25519", "Ed448"})
"""The curves of the OKP keys (``kty`` OKP) that verify EdDSA."""
ASYMMETRIC_ALGORITHMS = frozenset({*RSA_ALGORITHMS, *EC_CURVES, "EdDSA"})
"""Every JWS algorithm the bridge accepts, whatever a setting says."""


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
