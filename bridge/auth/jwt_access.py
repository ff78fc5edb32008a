"""RFC 9068 JWT access tokens, checked locally against the issuer's keys.

The signature and the registered claims are PyJWT's work (``jwt.PyJWT``,
algorithms pinned to the one the key was built for); this module decides
which key, which algorithms, and what else a token must be:

- the header as :mod:`bridge.auth.jws` says, with ``alg`` in
  ``issuer.jwt.algorithms`` (never ``none`` nor HMAC); the key of the type the
  algorithm needs. ``jku``, ``x5u``, ``x5c`` and ``jwk`` are never read.
- ``typ`` ``at+jwt`` or ``application/at+jwt`` (RFC 9068 §2.1, §4), unless
  ``issuer.jwt.require_typ`` is false; an ID token is refused either way.
- ``iss`` exactly the configured issuer; ``aud`` naming one of
  ``issuer.audiences`` (default: ``public_baseurl``); ``exp`` required;
  ``exp``, ``nbf``, ``iat`` numbers, checked with ``issuer.leeway``.
- the identity (scope or ``scp``, device, localpart) exactly as for
  introspection (:meth:`ClaimRules.identify`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from typing import Any

import jwt

from bridge.auth.jws import HeaderRules, JwtRefused
from bridge.auth.verifier import ClaimRules, Verdict
from bridge.config import BridgeConfig
from bridge.issuer.jwks import SigningKeys
from bridge.issuer.metadata import IssuerMetadata

_ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
# Claims only an ID token carries (OpenID Connect Core §2, §3.1.3.6, §3.3.2.11),
# and Keycloak's own marker of one.
_ID_TOKEN_CLAIMS = ("nonce", "at_hash", "c_hash", "s_hash")
_NUMERIC_CLAIMS = ("exp", "nbf", "iat")
# exp is compared here, once it is known to be a number (PyJWT reads it with int():
# "1700000000" and true would pass as numbers, true as an expired one).
_DECODE_OPTIONS: jwt.types.Options = {
    "require": ["exp", "iss", "aud"],
    "verify_exp": False,
    "enforce_minimum_key_length": True,
}


# Headers read lately, by their encoded segment: one issuer's tokens share a few.
_HEADERS_KEPT = 64


def unverified_header(token: str) -> dict[str, Any] | None:
    """The JOSE header, read only to choose the key (PyJWT reads it again, strictly)."""
    segment = token.partition(".")[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def refuse(reason: str, outcome: str = "bad_signature") -> Verdict:
    """A refusal; ``outcome`` for the metrics (``bad_signature``: not a JWT this
    homeserver can verify, or one whose signature fails)."""
    return Verdict(None, reason, outcome=outcome)


class JwtVerifier:
    """Judges JWT access tokens (``issuer.validation: jwt``); see the module."""

    def __init__(
        self,
        keys: SigningKeys,
        metadata: IssuerMetadata,
        config: BridgeConfig,
        rules: ClaimRules,
    ) -> None:
        self._keys = keys
        self._metadata = metadata
        # Its issuer, audiences and leeway are the token's; replaced by a reload.
        self.rules = rules
        issuer = config.issuer
        self._header_rules = HeaderRules(
            frozenset(issuer.jwt.algorithms),
            bad_alg="Token is signed with an algorithm this homeserver does not accept",
            crit="Token has critical header parameters this homeserver does not know",
            bad_kid="Token names its key wrongly",
        )
        self._require_typ = issuer.jwt.require_typ
        # A JWT's aud is always checked: against public_baseurl without audiences.
        self._default_audience = config.public_baseurl
        self._decoder = jwt.PyJWT()
        self._headers: dict[str, dict[str, Any] | None] = {}

    def _header(self, token: str) -> dict[str, Any] | None:
        """:func:`unverified_header`, remembered for the few headers an issuer uses
        (bounded: emptied when full, so made-up headers cannot grow it)."""
        segment = token.partition(".")[0]
        header = self._headers.get(segment)
        if header is None:
            header = unverified_header(segment)
            if len(self._headers) >= _HEADERS_KEPT:
                self._headers.clear()
            self._headers[segment] = header
        return header

    async def verify(self, token: str) -> Verdict:
        # Only while the discovery document is trusted (503 otherwise, never 401).
        self._metadata.require()
        header = self._header(token)
        if header is None:
            return refuse("Token is not a JWT")
        try:
            alg, kid = self._header_rules.check(header)
        except JwtRefused as e:
            return refuse(str(e))
        key = self._keys.held(kid, alg)
        if key is None:
            key = await self._keys.key(kid, alg)
        if isinstance(key, str):
            return refuse(key)
        try:
            decoded = self._decoder.decode_complete(
                token,
                key,
                algorithms=[alg],
                options=_DECODE_OPTIONS,
                audience=self.rules.audiences or self._default_audience,
                issuer=self.rules.issuer,
                leeway=self.rules.leeway,
            )
        except jwt.ImmatureSignatureError:
            return refuse("Token is not valid yet", "not_yet_valid")
        except jwt.InvalidIssuerError:
            return refuse("Token was issued by another issuer", "wrong_issuer")
        except jwt.InvalidAudienceError:
            return refuse("Token is not meant for this homeserver", "wrong_audience")
        except jwt.MissingRequiredClaimError as e:
            return refuse(f"Token has no {e.claim} claim")
        except jwt.InvalidSignatureError:
            return refuse("Token's signature is invalid")
        except jwt.PyJWTError:
            return refuse("Token is not a valid JWT access token")
        claims: dict[str, Any] = decoded["payload"]
        typ = decoded["header"].get("typ")
        if self._require_typ and (
            not isinstance(typ, str) or typ.lower() not in _ACCESS_TOKEN_TYPES
        ):
            return refuse("Token is not a JWT access token (typ at+jwt)", "not_access_token")
        if claims.get("typ") == "ID" or any(claim in claims for claim in _ID_TOKEN_CLAIMS):
            return refuse("Token is an ID token, not an access token", "not_access_token")
        for claim in _NUMERIC_CLAIMS:
            value = claims.get(claim)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)  # Python's JSON reads Infinity and NaN
            ):
                return refuse(f"Token's {claim} claim is not a number")
        exp = float(claims["exp"])
        if exp <= time.time() - self.rules.leeway:
            return Verdict(None, "Token has expired", soft_logout=True, outcome="expired")
        return self.rules.identify(claims, exp, key.key_id or "")
