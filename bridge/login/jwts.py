"""The two JWTs the login layer reads: ID tokens and logout tokens (PyJWT, pinned algorithms).

- **ID token** (OpenID Connect Core §3.1.3.7), from the token endpoint:
  ``alg`` in ``login.signing_algorithms``; ``iss`` the issuer; ``aud`` naming
  the bridge's client (and ``azp`` it when there are several audiences);
  ``exp``, ``iat`` and ``sub`` present; ``nonce`` the flow's, compared in
  constant time. The signature is checked with the issuer's keys when the
  bridge has them; without them, §3.1.3.7 step 6 lets a client that got the
  token straight from the token endpoint over TLS rely on that instead.
- **Logout token** (OpenID Connect Back-Channel Logout 1.0 §2.4, §2.6): the
  signature always, from the issuer's JWKS (:class:`SigningKeySource`); ``iss``,
  ``aud``, ``iat`` (not older than :data:`LOGOUT_TOKEN_MAX_AGE`), ``exp`` when
  present, ``jti``; the ``events`` claim holding the back-channel logout
  event; ``sub`` or ``sid``; no ``nonce``; ``typ``, when present,
  ``logout+jwt``. The single use of ``jti`` is the caller's (the store).

Both headers as :mod:`bridge.auth.jws` says, once PyJWT has read them. Every
refusal is a :class:`JwtRefused` with a reason fit for a log line (never the token).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from bridge.auth.jws import HeaderRules
from bridge.auth.jws import JwtRefused as JwtRefused  # the login layer's refusals

# A logout token issued longer ago than this is refused, so that its jti need
# only be remembered this long.
LOGOUT_TOKEN_MAX_AGE = 600
BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
_LOGOUT_TYPES = frozenset({"logout+jwt", "application/logout+jwt", "jwt"})


class SigningKeySource(Protocol):
    """The issuer's public signing keys by ``kid`` (the JWKS cache of bridge.issuer)."""

    async def key(self, kid: str | None, alg: str) -> jwt.PyJWK | str:
        """The key for ``kid`` and ``alg``, or why there is none."""
        ...


@dataclass(frozen=True)
class IdTokenClaims:
    sub: str
    sid: str | None


@dataclass(frozen=True)
class LogoutClaims:
    sub: str | None
    sid: str | None
    jti: str
    # When the jti may be forgotten (Unix seconds).
    remember_until: int


class JwtChecks:
    """Checks ID and logout tokens for one issuer and one client."""

    def __init__(
        self,
        *,
        issuer: str,
        client_id: str,
        algorithms: tuple[str, ...],
        keys: SigningKeySource,
        leeway: float,
    ) -> None:
        self._issuer = issuer
        self._client_id = client_id
        self._header_rules = HeaderRules(
            frozenset(algorithms),
            bad_alg="algorithm {alg!r} is not accepted",
            crit="critical header parameters are not understood",
            bad_kid="not a JWT",  # as PyJWT says it first
        )
        self.keys = keys
        self._leeway = leeway  # seconds of clock skew allowed (issuer.leeway)

    def _header(self, token: str) -> tuple[dict[str, Any], str, str | None]:
        """The header, its ``alg`` and its ``kid``."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise JwtRefused("not a JWT") from e
        return header, *self._header_rules.check(header)

    async def _decode(
        self, token: str, alg: str, kid: str | None, *, required: list[str]
    ) -> dict[str, Any]:
        """The claims of a token signed with the issuer's key for its ``kid``."""
        key = await self.keys.key(kid, alg)
        if isinstance(key, str):
            raise JwtRefused(key)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self._client_id,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": required, "verify_iat": True},
            )
        except jwt.PyJWTError as e:
            raise JwtRefused(f"{type(e).__name__}: {e}") from e
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self._client_id:
            raise JwtRefused("several audiences and azp is not the bridge")
        return claims

    async def id_token(self, token: str, *, nonce: str | None) -> IdTokenClaims:
        """The checked claims of an ID token from the token endpoint. ``nonce`` None: the
        grant had none (password grant), and the token must not carry one either."""
        _, alg, kid = self._header(token)
        claims = await self._decode(token, alg, kid, required=["iss", "aud", "exp", "iat", "sub"])
        got = claims.get("nonce")
        if nonce is None:
            if got is not None:
                raise JwtRefused("unexpected nonce")
        elif not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
            raise JwtRefused("nonce does not match")
        sub = claims.get("sub")
        sid = claims.get("sid")
        if not isinstance(sub, str) or not sub:
            raise JwtRefused("sub is not a string")
        return IdTokenClaims(sub=sub, sid=sid if isinstance(sid, str) and sid else None)

    async def logout_token(self, token: str, *, now: float) -> LogoutClaims:
        """The checked claims of a logout token (Back-Channel Logout §2.6), received at
        ``now`` (Unix seconds, the bridge's clock: its age is the bridge's to judge;
        PyJWT checks ``exp`` and ``iat`` against the system clock)."""
        header, alg, kid = self._header(token)
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _LOGOUT_TYPES):
            raise JwtRefused(f"typ {typ!r} is not a logout token's")
        claims = await self._decode(token, alg, kid, required=["iss", "aud", "iat", "jti"])
        if "nonce" in claims:
            raise JwtRefused("a logout token must not carry a nonce")
        events = claims.get("events")
        if not isinstance(events, dict) or not isinstance(
            events.get(BACKCHANNEL_LOGOUT_EVENT), dict
        ):
            raise JwtRefused("no back-channel logout event")
        sub, sid, jti = claims.get("sub"), claims.get("sid"), claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise JwtRefused("jti is not a string")
        sub = sub if isinstance(sub, str) and sub else None
        sid = sid if isinstance(sid, str) and sid else None
        if sub is None and sid is None:
            raise JwtRefused("neither sub nor sid")
        iat = claims["iat"]
        if not isinstance(iat, int | float) or isinstance(iat, bool):
            raise JwtRefused("iat is not a number")
        if iat < now - LOGOUT_TOKEN_MAX_AGE:
            raise JwtRefused("issued too long ago")
        exp = claims.get("exp")
        until = iat + LOGOUT_TOKEN_MAX_AGE + self._leeway
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            until = max(until, exp + self._leeway)
        return LogoutClaims(sub=sub, sid=sid, jti=jti, remember_until=int(until) + 1)
