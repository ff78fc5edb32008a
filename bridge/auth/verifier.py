"""Token verifiers: one answer about one token, with how long it may be trusted.

:class:`IntrospectionVerifier` asks the issuer (RFC 7662);
:class:`bridge.auth.jwt_access.JwtVerifier` checks RFC 9068 JWTs itself;
:class:`JwtThenIntrospection` sends each token to the one that fits it. All
of them leave the identity to :class:`ClaimRules`.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from bridge.auth.identity import Identity, identity_from_claims
from bridge.config import BridgeConfig
from bridge.errors import Forbidden, MatrixError, UnknownToken
from bridge.homeserver.registration import user_namespace
from bridge.issuer.introspection import Introspector

# Token types that may be presented as a bearer access token (RFC 7662 §2.2 /
# RFC 6749 §7.1; MAS says "access_token"). A refresh token must never pass.
_ACCESS_TOKEN_TYPES = frozenset({"bearer", "access_token"})
# Seconds of clock skew allowed on exp/nbf/iat by default (issuer.leeway).
LEEWAY = 30.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome for one token: an identity, or why there is none.

    ``expires_at`` is the token's own expiry (Unix time) where known.
    ``forbidden`` marks a valid token of a user the bridge refuses to act as
    (403, which does not log the client out as a 401 would). ``soft_logout``
    marks a token that merely expired (the client may refresh it). ``outcome``
    names the judgement for the metrics (``bridge.ops.metrics.VALIDATION_OUTCOMES``).
    """

    identity: Identity | None
    reason: str = ""
    expires_at: float | None = None
    forbidden: bool = False
    soft_logout: bool = False
    outcome: str = "valid"
    # The ``kid`` of the issuer's key that verified a JWT ("" for a key without one);
    # None for a token the issuer vouched for by introspection.
    key_id: str | None = None

    def identity_or_raise(self) -> Identity:
        if self.identity is None:
            if self.forbidden:
                raise Forbidden(self.reason)
            raise UnknownToken(self.reason, soft_logout=self.soft_logout)
        return self.identity


class TokenVerifier(Protocol):
    """Anything that can judge a token; issuer failures raise IssuerUnavailable."""

    async def verify(self, token: str) -> Verdict: ...


@dataclass(frozen=True)
class ClaimRules:
    """What every active token's claims must satisfy, whoever vouched for them."""

    server_name: str
    localpart_claim: str = "username"
    # ``iss`` must equal this when the answer carries one (RFC 7662 §2.2 makes it optional).
    issuer: str | None = None
    audiences: frozenset[str] = frozenset()
    client_ids: frozenset[str] = frozenset()
    # The appservice sender (acting as it carries the appservice's own powers) and
    # any other user the operator reserved.
    reserved_localparts: frozenset[str] = frozenset()
    # Other appservices' exclusive user namespaces (matched as the homeserver does).
    exclusive_users: tuple[re.Pattern[str], ...] = ()
    leeway: float = LEEWAY

    @classmethod
    def from_config(cls, config: BridgeConfig) -> ClaimRules:
        return cls(
            leeway=config.issuer.leeway,
            server_name=config.server_name,
            localpart_claim=config.issuer.localpart_claim,
            issuer=config.issuer.issuer,
            audiences=frozenset(config.issuer.audiences),
            client_ids=frozenset(config.issuer.client_ids),
            reserved_localparts=frozenset(
                {config.appservice.sender_localpart, *config.appservice.reserved_localparts}
            ),
            exclusive_users=tuple(re.compile(rx) for rx in config.appservice.exclusive_users),
        )

    def judge(self, claims: Mapping[str, object], now: float) -> Verdict:
        """The verdict on an active token's claims (expiry, issuer, audience, identity)."""
        exp = claims.get("exp")
        expires_at = float(exp) if isinstance(exp, int | float) else None
        if expires_at is not None and expires_at <= now - self.leeway:
            return Verdict(None, "Token has expired", soft_logout=True, outcome="expired")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf > now + self.leeway:
            return Verdict(None, "Token is not valid yet", outcome="not_yet_valid")
        if self.issuer is not None and "iss" in claims and claims["iss"] != self.issuer:
            return Verdict(None, "Token was issued by another issuer", outcome="wrong_issuer")
        if self.audiences and not self.audiences & _audiences(claims.get("aud")):
            return Verdict(None, "Token is not meant for this homeserver", outcome="wrong_audience")
        return self.identify(claims, expires_at)

    def identify(
        self, claims: Mapping[str, object], expires_at: float | None, key_id: str | None = None
    ) -> Verdict:
        """The verdict on the identity part of claims already checked for time and origin
        (``key_id``: as :attr:`Verdict.key_id`)."""
        if self.client_ids and claims.get("client_id") not in self.client_ids:
            return Verdict(
                None,
                "Token was issued to a client this homeserver does not accept",
                outcome="wrong_client",
            )
        try:
            identity = identity_from_claims(
                claims,
                server_name=self.server_name,
                localpart_claim=self.localpart_claim,
                reserved_localparts=self.reserved_localparts,
            )
        except MatrixError as e:
            return Verdict(
                None,
                e.message,
                expires_at,
                forbidden=isinstance(e, Forbidden),
                outcome=e.outcome or "bad_localpart",
            )
        if not _namespace(self.server_name).fullmatch(identity.user_id) or any(
            rx.match(identity.user_id) for rx in self.exclusive_users
        ):
            return Verdict(
                None,
                "This user belongs to another application service",
                forbidden=True,
                outcome="foreign_namespace",
            )
        return Verdict(identity, expires_at=expires_at, key_id=key_id)


@functools.lru_cache(maxsize=4)
def _namespace(server_name: str) -> re.Pattern[str]:
    return re.compile(user_namespace(server_name))


def _audiences(aud: object) -> set[str]:
    if isinstance(aud, str):
        return {aud}
    if isinstance(aud, list):
        return {a for a in aud if isinstance(a, str)}
    return set()


class IntrospectionVerifier:
    """Judges opaque tokens by RFC 7662 introspection (docs/design.md, "Issuer client"
    and "Token → identity")."""

    def __init__(self, introspector: Introspector, rules: ClaimRules) -> None:
        self._introspector = introspector
        # Replaced as a whole by a reload (bridge.runtime.reload): allow-lists may change.
        self.rules = rules

    async def verify(self, token: str) -> Verdict:
        claims = await self._introspector.introspect(token)
        if claims.get("active") is not True:
            return Verdict(None, "Token is not active", outcome="inactive")
        token_type = claims.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() not in _ACCESS_TOKEN_TYPES:
            return Verdict(None, "Token is not an access token", outcome="not_access_token")
        return self.rules.judge(claims, time.time())


class JwtThenIntrospection:
    """JWTs are checked locally; any other token is introspected
    (``issuer.validation: jwt_then_introspection``). A token that looks like a
    JWT is never introspected, whatever its fate: an invalid JWT stays refused."""

    def __init__(self, jwt: TokenVerifier, introspection: TokenVerifier) -> None:
        self.jwt = jwt
        self.introspection = introspection

    async def verify(self, token: str) -> Verdict:
        if looks_like_jwt(token):
            return await self.jwt.verify(token)
        return await self.introspection.verify(token)


def looks_like_jwt(token: str) -> bool:
    """Three dot-separated parts, the first base64url of a JSON object (``{`` then ``"``
    or white space encode as ``ey``): a JWS in compact form. Opaque tokens (MAS's
    ``mat_...``, oidc-provider's) are not."""
    return token.startswith("ey") and token.count(".") == 2
