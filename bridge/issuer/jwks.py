"""The issuer's signing keys (its JWKS, RFC 7517), for checking JWT access tokens.

- Fetched with the bridge's own session from the discovery document's
  ``jwks_uri``, within ``issuer.timeout`` and the in-flight bound on issuer
  calls (:class:`InflightLimit`); kept by ``kid``; refreshed in the background
  every ``jwt.jwks_refresh_interval``. A failed fetch keeps the keys held.
- A ``kid`` that is not held causes one refetch, shared by every token that
  waits for it; then no other refetch for ``jwt.jwks_refetch_cooldown``
  seconds, whatever ``kid`` is asked for; and a ``kid`` the refetch did not
  find is refused at once for ``jwt.unknown_kid_ttl`` (a bounded memory). So
  a flood of made-up ``kid``s reaches the issuer at most once per cooldown,
  besides the scheduled refreshes (which do not start a cooldown: a key the
  issuer starts to use just after one is still found at once).
- During a cooldown, a ``kid`` neither held nor known to be missing gets 503
  with ``Retry-After``: it may be a key the issuer has just started to sign
  with, and a 401 would log its users out.
- A key serves only the algorithms its type fits (RSA: RS*/PS*; EC: ES256 on
  P-256, ES384 on P-384, ES512 on P-521; OKP: EdDSA on Ed25519/Ed448), only
  when its ``use`` is ``sig`` or absent, its ``key_ops`` (if any) include
  ``verify``, and its own ``alg`` (if any) is the token's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import jwt

from bridge.auth.jws import EC_CURVES as _EC_CURVES
from bridge.auth.jws import OKP_CURVES as _OKP_CURVES
from bridge.auth.jws import RSA_ALGORITHMS as _RSA
from bridge.config import IssuerConfig
from bridge.errors import IssuerUnavailable
from bridge.issuer.http import IssuerHTTP, unreachable
from bridge.issuer.metadata import IssuerMetadata
from bridge.runtime.singleflight import SingleFlight

log = logging.getLogger("bridge.issuer")

# A JWKS larger than this, or with more keys, is not a JWKS.
MAX_JWKS_BYTES = 256 * 1024
MAX_KEYS = 100

_UNAVAILABLE = "The authentication service's keys are unavailable"
_UNREACHABLE = unreachable("JWKS fetch", _UNAVAILABLE)


def fits(jwk: Mapping[str, Any], alg: str) -> bool:
    """Whether the key may verify a signature made with ``alg`` (see the module)."""
    if jwk.get("alg", alg) != alg:
        return False
    kty = jwk.get("kty")
    if alg in _RSA:
        return kty == "RSA"
    if alg in _EC_CURVES:
        return kty == "EC" and jwk.get("crv") == _EC_CURVES[alg]
    if alg == "EdDSA":
        return kty == "OKP" and jwk.get("crv") in _OKP_CURVES
    return False  # none, HS*, anything unknown: never


def _for_signatures(jwk: object) -> bool:
    if not isinstance(jwk, dict) or jwk.get("kty") not in ("RSA", "EC", "OKP"):
        return False  # not a public signing key (oct, a secret, is never one)
    if "d" in jwk:
        return False  # a private key published by mistake is not trusted either
    key_ops = jwk.get("key_ops")
    kid = jwk.get("kid")
    return (
        jwk.get("use", "sig") == "sig"
        and (key_ops is None or (isinstance(key_ops, list) and "verify" in key_ops))
        and (kid is None or isinstance(kid, str))
    )


class SigningKeys:
    """The issuer's JWKS by ``kid``, fetched and refreshed as the module describes."""

    def __init__(
        self, http: IssuerHTTP, metadata: IssuerMetadata, config: IssuerConfig, *, max_unknown: int
    ) -> None:
        self._http = http
        self._metadata = metadata
        self._config = config.jwt
        self._clock = http.clock
        self._max_unknown = max_unknown
        self._keys: dict[str | None, list[dict[str, Any]]] = {}
        # (kid, position under that kid, alg) → the key, built once (None: unusable).
        self._built: dict[tuple[str | None, int, str], jwt.PyJWK | None] = {}
        self.loaded = False
        # clock.monotonic() when the last refetch for an unknown kid ended.
        self._refetched_at = -math.inf
        self._failure: IssuerUnavailable | None = None
        self._unknown: OrderedDict[str | None, float] = OrderedDict()
        self._flight: SingleFlight[str, None] = SingleFlight()
        # Told when a fetch finds keys gone that were held (a kid no longer published,
        # or other material under it): what they verified may no longer be trusted
        # (a retired or compromised key).
        self.on_unpublished: Callable[[set[str | None]], None] | None = None

    @property
    def kids(self) -> set[str | None]:
        """The ``kid``s held now."""
        return set(self._keys)

    def held(self, kid: str | None, alg: str) -> jwt.PyJWK | str | None:
        """The key if held now; a reason when the held key does not fit; None when no
        key is held for ``kid`` (then :meth:`key`)."""
        return self._find(kid, alg)

    async def key(self, kid: str | None, alg: str) -> jwt.PyJWK | str:
        """The key for a token's ``kid`` and ``alg``, or why there is none (a 401).

        IssuerUnavailable when it cannot be known now (the JWKS could not be
        fetched, or a refetch is cooling down).
        """
        found = self._find(kid, alg)
        if found is not None:
            return found
        now = self._clock.monotonic()
        missing_until = self._unknown.get(kid)
        if missing_until is not None and missing_until > now:
            return "Token is signed with a key the issuer does not publish"
        if not len(self._flight):
            wait = self._refetched_at + self._config.jwks_refetch_cooldown - now
            if wait > 0:
                raise IssuerUnavailable(
                    "The authentication service's keys are being refreshed",
                    retry_after=math.ceil(wait),
                )
        await self._flight.run("jwks", self._refetch)
        found = self._find(kid, alg)
        if found is not None:
            return found
        if self._failure is not None:
            # No other fetch before the cooldown ends: come back then.
            cooldown = self._config.jwks_refetch_cooldown
            raise IssuerUnavailable(self._failure.message, retry_after=max(1, math.ceil(cooldown)))
        if self._config.unknown_kid_ttl > 0:
            self._unknown[kid] = self._clock.monotonic() + self._config.unknown_kid_ttl
            self._unknown.move_to_end(kid)
            if len(self._unknown) > self._max_unknown:
                self._unknown.popitem(last=False)
        return "Token is signed with a key the issuer does not publish"

    def _find(self, kid: str | None, alg: str) -> jwt.PyJWK | str | None:
        """The key; a reason when the held key does not fit; None when none is held."""
        if kid is None:
            # A token without a kid: the one key that fits its algorithm, if only one does.
            fitting = [
                (k, n) for k, keys in self._keys.items() for n, j in enumerate(keys) if fits(j, alg)
            ]
            if len(fitting) > 1:
                return "Token does not name its key (kid) and the issuer has several"
            if not fitting:
                return None
            kid, position = fitting[0]
            return self._build(kid, position, alg) or None
        keys = self._keys.get(kid)
        if keys is None:
            return None
        for position, jwk in enumerate(keys):
            if fits(jwk, alg):
                built = self._build(kid, position, alg)
                if built is not None:
                    return built
        return f"Token's key does not fit its algorithm {alg}"

    def _build(self, kid: str | None, position: int, alg: str) -> jwt.PyJWK | None:
        slot = (kid, position, alg)
        if slot not in self._built:
            try:
                key = jwt.PyJWK(self._keys[kid][position], algorithm=alg)
                short = key.Algorithm.check_key_length(key.Algorithm.prepare_key(key.key))
            except (jwt.PyJWTError, ValueError, TypeError, KeyError) as e:
                log.warning("issuer key %r is unusable for %s: %s", kid, alg, e)
                key, short = None, None
            if short:
                log.warning("issuer key %r is refused for %s: %s", kid, alg, short)
                key = None
            self._built[slot] = key
        return self._built[slot]

    async def _refetch(self) -> None:
        """A fetch for an unknown kid: it starts a cooldown, and its failure is recorded,
        not raised (its waiters read ``_failure``)."""
        try:
            await self.fetch()
        except IssuerUnavailable as e:
            log.warning("JWKS fetch failed: %s", e.message)
        finally:
            self._refetched_at = self._clock.monotonic()

    async def _refresh(self) -> None:
        try:
            await self.fetch()
        except IssuerUnavailable as e:
            log.warning("JWKS refresh failed: %s", e.message)

    async def fetch(self) -> None:
        """Fetch the JWKS and keep it if it is one (IssuerUnavailable otherwise)."""
        try:
            keys = await self._download()
        except IssuerUnavailable as e:
            self._failure = e
            raise
        self._failure = None
        # Gone: a kid no longer published, or published with other key material.
        gone = {kid for kid, held in self._keys.items() if keys.get(kid) != held}
        self._keys = keys
        self._built = {}
        self.loaded = True
        if gone and self.on_unpublished is not None:
            self.on_unpublished(gone)

    async def _download(self) -> dict[str | None, list[dict[str, Any]]]:
        url = self._metadata.require().endpoint("jwks_uri")
        if url is None:
            raise IssuerUnavailable("The authentication service advertises no jwks_uri")
        async with self._http.call("jwks", url, unreachable=_UNREACHABLE) as answer:
            if answer.status != 200:
                raise answer.refused("the JWKS", _UNAVAILABLE)
            body = bytearray()
            async for chunk in answer.response.content.iter_any():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("JWKS too large")
            document = json.loads(body)
            entries = document.get("keys") if isinstance(document, dict) else None
            if not isinstance(entries, list):
                raise IssuerUnavailable("The authentication service's JWKS is malformed")
            keys: dict[str | None, list[dict[str, Any]]] = {}
            for jwk in entries[:MAX_KEYS]:
                if _for_signatures(jwk):
                    keys.setdefault(jwk.get("kid"), []).append(jwk)
            if not keys:
                raise IssuerUnavailable("The authentication service's JWKS has no signing key")
        return keys

    def next_refresh(self) -> float:
        """Seconds until the next background refresh: ``jwks_refresh_interval``, or the
        cooldown while no JWKS was ever loaded."""
        if self.loaded:
            return self._config.jwks_refresh_interval
        return self._config.jwks_refetch_cooldown

    async def refresh(self) -> None:
        """One background refresh, once the discovery document is loaded; a failure is
        logged, and the keys held are kept."""
        if self._metadata.current is not None:
            await self._flight.run("jwks", self._refresh)

    async def refresh_forever(self) -> None:
        """Background task: :meth:`refresh` every :meth:`next_refresh` seconds."""
        while True:
            await asyncio.sleep(self.next_refresh())
            await self.refresh()
