"""The validated-token cache, in front of any :class:`TokenVerifier`.

Keys are SHA-256 digests of the token, never the token. A positive answer is
kept for min(configured maximum, time left on the token); a negative one for
a short while, in a cache of its own, so that any number of made-up tokens
can never push a live session out; an issuer failure is never kept.
Concurrent requests with the same unknown token share one verification.

Cached sessions are indexed by user and device, so that when the
authentication service ends a device or a user (MAS's ``delete_device``,
``sync_devices``, ``delete_user``) every cached token of it stops working at
once, not when its entry expires (:meth:`CachedAuthenticator.forget_device`,
:meth:`CachedAuthenticator.forget_user`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from cachetools import TLRUCache, TTLCache

from bridge.auth.identity import Identity
from bridge.auth.verifier import TokenVerifier, Verdict
from bridge.config import TokenCacheConfig
from bridge.errors import IssuerUnavailable
from bridge.metrics import Metrics
from bridge.singleflight import SingleFlight

log = logging.getLogger("bridge.auth")


def token_key(token: str) -> bytes:
    """The cache key of a token: its SHA-256 digest."""
    return hashlib.sha256(token.encode()).digest()


def _deadline(_key: bytes, entry: tuple[Verdict, float], _now: float) -> float:
    return entry[1]


class _Sessions(TLRUCache[bytes, tuple[Verdict, float]]):
    """The positive cache; counts the live sessions it pushes out when full (its
    ``popitem``; expiry goes through ``expire``, which is not an eviction)."""

    on_evict: Callable[[], Any] = staticmethod(lambda: None)

    def popitem(self) -> tuple[bytes, tuple[Verdict, float]]:
        item = super().popitem()
        self.on_evict()
        return item


class CachedAuthenticator:
    """Token → :class:`Identity`, through a bounded TTL cache and single-flight."""

    def __init__(
        self, verifier: TokenVerifier, config: TokenCacheConfig, metrics: Metrics | None = None
    ) -> None:
        self._verifier = verifier
        metrics = metrics if metrics is not None else Metrics()
        self._hit = metrics.cache_lookup["hit"]
        self._negative_hit = metrics.cache_lookup["negative_hit"]
        self._miss = metrics.cache_lookup["miss"]
        self._validations = metrics.validation
        self._evictions = metrics.token_cache_evictions
        self._configure(config)
        entries = metrics.token_cache_entries
        positive, negative = entries.labels("positive"), entries.labels("negative")

        def sample() -> None:
            positive.set(len(self._cache))
            negative.set(len(self._negative))

        metrics.add_sampler(sample)
        self._inflight: SingleFlight[bytes, Verdict] = SingleFlight()
        # user → device → keys of its cached sessions. Entries the cache evicted
        # on its own linger until the index is rebuilt (when it has grown to
        # twice the cache's size) or their device is forgotten.
        self._sessions: dict[str, dict[str, set[bytes]]] = {}
        self._indexed = 0
        # Bumped by every forget: a verification that was running meanwhile is
        # answered but not cached, so it cannot bring a forgotten session back.
        self._generation = 0
        self.hits = 0
        self.misses = 0

    def _configure(self, config: TokenCacheConfig) -> None:
        self._config = config
        self._cache = _Sessions(maxsize=config.max_size, ttu=_deadline, timer=time.monotonic)
        self._cache.on_evict = self._evictions.inc
        self._negative: TTLCache[bytes, Verdict] = TTLCache(
            maxsize=config.negative_max_size,
            ttl=config.negative_ttl or 1.0,
            timer=time.monotonic,
        )

    def reconfigure(self, config: TokenCacheConfig) -> None:
        """New bounds (a reload): live sessions move to the new cache (as many as fit,
        the latest first; their deadlines are kept, and cut to the new ``max_ttl``);
        refused tokens are forgotten (they are asked about again)."""
        if config == self._config:
            return
        old = self._cache
        self._configure(config)
        now = time.monotonic()
        kept = list(old.items())[-config.max_size :]
        for key, (verdict, deadline) in kept:
            self._cache[key] = (verdict, min(deadline, now + config.max_ttl))
        self._reindex()

    @property
    def verifier(self) -> TokenVerifier:
        return self._verifier

    def __len__(self) -> int:
        """Live sessions held (negative entries are counted apart)."""
        return len(self._cache)

    async def authenticate(self, token: str) -> Identity:
        """The identity behind ``token``; UnknownToken or IssuerUnavailable otherwise."""
        key = token_key(token)
        entry = self._cache.get(key)
        if entry is not None:
            self.hits += 1
            self._hit.inc()
            return entry[0].identity_or_raise()
        refused = self._negative.get(key)
        if refused is not None:
            self.hits += 1
            self._negative_hit.inc()
            return refused.identity_or_raise()
        self.misses += 1
        self._miss.inc()
        log.debug("token cache miss: asking the issuer")
        verdict = await self._inflight.run(key, lambda: self._verify_and_keep(key, token))
        return verdict.identity_or_raise()

    def forget(self, token: str) -> None:
        """Drop a token (e.g. after logout) so its next use asks the issuer again."""
        key = token_key(token)
        self._cache.pop(key, None)
        self._negative.pop(key, None)

    def forget_device(self, user_id: str, device_id: str) -> int:
        """Drop every cached session of the device; how many there were."""
        self._generation += 1
        devices = self._sessions.get(user_id)
        keys = devices.pop(device_id, set()) if devices is not None else set()
        if devices is not None and not devices:
            del self._sessions[user_id]
        return self._drop(keys)

    def forget_user(self, user_id: str) -> int:
        """Drop every cached session of every device of the user; how many there were."""
        self._generation += 1
        devices = self._sessions.pop(user_id, {})
        return self._drop(set().union(*devices.values()))

    def _drop(self, keys: set[bytes]) -> int:
        self._indexed -= len(keys)
        return sum(self._cache.pop(key, None) is not None for key in keys)

    def _index(self, key: bytes, identity: Identity) -> None:
        if self._indexed >= 2 * self._config.max_size:
            self._reindex()
        devices = self._sessions.setdefault(identity.user_id, {})
        keys = devices.setdefault(identity.device_id, set())
        if key not in keys:
            keys.add(key)
            self._indexed += 1

    def _reindex(self) -> None:
        """Rebuild the index from what the cache still holds."""
        self._sessions = {}
        self._indexed = 0
        for key, (verdict, _deadline) in list(self._cache.items()):
            if verdict.identity is not None:
                self._index(key, verdict.identity)

    async def _verify_and_keep(self, key: bytes, token: str) -> Verdict:
        generation = self._generation
        try:
            verdict = await self._verifier.verify(token)
        except IssuerUnavailable:
            self._validations["issuer_unavailable"].inc()
            raise
        log.debug("token judged by the issuer: %s", verdict.outcome)
        counter = self._validations.get(verdict.outcome)
        if counter is not None:
            counter.inc()
        if verdict.identity is None:
            if self._config.negative_ttl > 0:
                self._negative[key] = verdict
            return verdict
        ttl = self._config.max_ttl
        if verdict.expires_at is not None:
            ttl = min(ttl, verdict.expires_at - time.time())
        if ttl > 0 and generation == self._generation:
            self._cache[key] = (verdict, time.monotonic() + ttl)
            self._index(key, verdict.identity)
        return verdict
