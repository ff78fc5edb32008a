"""Token verifiers: one answer about one token, with how long it may be trusted."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from bridge.auth.identity import Identity, identity_from_claims
from bridge.errors import UnknownToken
from bridge.issuer.introspection import Introspector

# Token types that may be presented as a bearer access token (RFC 7662 §2.2 /
# RFC 6749 §7.1; MAS says "access_token"). A refresh token must never pass.
_ACCESS_TOKEN_TYPES = frozenset({"bearer", "access_token"})
# Seconds of clock skew allowed on exp/nbf.
LEEWAY = 30


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome for one token: an identity, or why there is none.

    ``expires_at`` is the token's own expiry (Unix time) where known.
    """

    identity: Identity | None
    reason: str = ""
    expires_at: float | None = None

    def identity_or_raise(self) -> Identity:
        if self.identity is None:
            raise UnknownToken(self.reason)
        return self.identity


class TokenVerifier(Protocol):
    """Anything that can judge a token; issuer failures raise IssuerUnavailable."""

    async def verify(self, token: str) -> Verdict: ...


class IntrospectionVerifier:
    """Judges opaque tokens by RFC 7662 introspection (DESIGN.md §2, §3)."""

    def __init__(self, introspector: Introspector, *, server_name: str, localpart_claim: str):
        self._introspector = introspector
        self._server_name = server_name
        self._localpart_claim = localpart_claim

    async def verify(self, token: str) -> Verdict:
        claims = await self._introspector.introspect(token)
        if claims.get("active") is not True:
            return Verdict(None, "Token is not active")
        token_type = claims.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() not in _ACCESS_TOKEN_TYPES:
            return Verdict(None, "Token is not an access token")
        now = time.time()
        exp = claims.get("exp")
        expires_at = float(exp) if isinstance(exp, int | float) else None
        if expires_at is not None and expires_at <= now - LEEWAY:
            return Verdict(None, "Token has expired")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf > now + LEEWAY:
            return Verdict(None, "Token is not valid yet")
        try:
            identity = identity_from_claims(
                claims, server_name=self._server_name, localpart_claim=self._localpart_claim
            )
        except UnknownToken as e:
            return Verdict(None, e.message, expires_at)
        return Verdict(identity, expires_at=expires_at)
