"""The validated-token cache, in front of any :class:`TokenVerifier`.

The policy (README, "Token cache"):

- **Key**: SHA-256 of (validation mode, issuer, token). The token itself is
  never kept, and an answer given under one mode or issuer never answers
  another, even when two authenticators share one :class:`TokenCache`.
- **Fresh** for min(``max_ttl``, the token's ``exp`` - now) from the moment it
  was validated. A hit never extends an entry. At most ``max_size`` sessions,
  the least recently used evicted first.
- **Refusals** (inactive, expired, malformed, forbidden) are kept for
  ``negative_ttl``, in a bounded cache of their own, so that any number of
  made-up tokens can never push a live session out.
- **Issuer failures** (:class:`IssuerUnavailable`: transport errors,
  timeouts, 5xx, 429, malformed answers) are never kept.
- **Stale if error** (``stale_if_error``): a session past its freshness is
  kept until its token's own ``exp``; when revalidating it finds the issuer
  unavailable, the session is served rather than a 503, never past ``exp``,
  and the issuer is asked again at most every ``Retry-After`` seconds.
- **Single flight**: concurrent validations of one token share one call.

The hit path (:meth:`CachedAuthenticator.cached`) is one SHA-256, one dict
lookup and one clock comparison: plain ordered dicts with explicit deadlines,
because cachetools' TLRU alone costs about 5 µs a hit.

Cached sessions are indexed by user and device, so that when the
authentication service ends a device or a user (MAS's ``delete_device``,
``sync_devices``, ``delete_user``) every cached token of it stops working at
once, not when its entry expires (:meth:`CachedAuthenticator.forget_device`,
:meth:`CachedAuthenticator.forget_user`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import OrderedDict
from typing import TypeAlias

from bridge.auth.identity import Identity
from bridge.auth.verifier import TokenVerifier, Verdict
from bridge.config import TokenCacheConfig
from bridge.errors import IssuerUnavailable
from bridge.ops.metrics import Metrics
from bridge.runtime.clock import Clock
from bridge.runtime.singleflight import SingleFlight

log = logging.getLogger("bridge.auth")

# identity, fresh until, usable until (both Clock.monotonic()), the token's exp
# (Unix time) or None, the kid of the key that verified it (Verdict.key_id). A
# tuple: the hit path reads it by index, cheaply.
_Session: TypeAlias = tuple[Identity, float, float, float | None, str | None]


def cache_namespace(validation: str, issuer: str) -> bytes:
    """What goes into every key before the token: the validation mode and the issuer."""
    return f"{validation}\0{issuer}\0".encode()


def token_key(token: str, namespace: bytes = b"") -> bytes:
    """The cache key of a token: SHA-256 of its namespace and the token."""
    return hashlib.sha256(namespace + token.encode()).digest()


class TokenCache:
    """The bounded maps behind one or more :class:`CachedAuthenticator` (see the module).

    ``sessions``: key → :data:`_Session`, least recently used first.
    ``refused``: key → (verdict, until), oldest first.
    ``clock``: what the deadlines are read from.
    """

    def __init__(self, config: TokenCacheConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.sessions: OrderedDict[bytes, _Session] = OrderedDict()
        self.refused: OrderedDict[bytes, tuple[Verdict, float]] = OrderedDict()
        # user → device → keys of its cached sessions. Entries evicted meanwhile
        # linger until the index is rebuilt (when it has grown to twice the
        # cache's size) or their device is forgotten.
        self._index: dict[str, dict[str | None, set[bytes]]] = {}
        self._indexed = 0
        # Bumped by every forget: a validation that was running meanwhile is
        # answered but not kept, so it cannot bring a forgotten session back.
        self.generation = 0
        # Live sessions pushed out of a full cache.
        self.evictions = 0

    def reconfigure(self, config: TokenCacheConfig) -> None:
        """New bounds (a reload): live sessions are kept (as many as fit, the most
        recently used), their freshness cut to the new ``max_ttl``; refusals are
        forgotten (those tokens are asked about again)."""
        if config == self.config:
            return
        self.config = config
        while len(self.sessions) > config.max_size:
            self.sessions.popitem(last=False)
        latest = self.clock.monotonic() + config.max_ttl
        for key, (identity, fresh, usable, exp, key_id) in list(self.sessions.items()):
            if fresh > latest:
                self.sessions[key] = (identity, latest, max(usable, latest), exp, key_id)
        self.refused.clear()
        self._reindex()

    def keep(self, key: bytes, verdict: Verdict, generation: int) -> None:
        """Keep a positive verdict for as long as the policy allows (maybe not at all)."""
        identity = verdict.identity
        assert identity is not None
        if generation != self.generation:
            return
        config = self.config
        now = self.clock.monotonic()
        ttl = config.max_ttl
        usable: float | None = None
        if verdict.expires_at is not None:
            left = verdict.expires_at - self.clock.time()
            ttl = min(ttl, left)
            if config.stale_if_error:
                usable = left
        if ttl <= 0:
            return
        fresh_until = now + ttl
        usable_until = fresh_until if usable is None else now + usable
        self.sessions[key] = (
            identity,
            fresh_until,
            usable_until,
            verdict.expires_at,
            verdict.key_id,
        )
        self.sessions.move_to_end(key)
        if len(self.sessions) > config.max_size:
            _, pushed_out = self.sessions.popitem(last=False)
            if pushed_out[2] > now:  # a live session, not one waiting to expire
                self.evictions += 1
        self._add_to_index(key, identity)

    def refuse(self, key: bytes, verdict: Verdict) -> None:
        """Keep a refusal for ``negative_ttl`` seconds (0: not at all)."""
        self.sessions.pop(key, None)
        if self.config.negative_ttl <= 0:
            return
        self.refused[key] = (verdict, self.clock.monotonic() + self.config.negative_ttl)
        self.refused.move_to_end(key)
        if len(self.refused) > self.config.negative_max_size:
            self.refused.popitem(last=False)

    def clear(self) -> None:
        """Forget every session and refusal (their judgement's rules have changed)."""
        self.generation += 1
        self.sessions.clear()
        self.refused.clear()
        self._reindex()

    def forget(self, key: bytes) -> float | None:
        """Drop the key's session and refusal; the session's token's exp, where known."""
        self.refused.pop(key, None)
        session = self.sessions.pop(key, None)
        return None if session is None else session[3]

    def forget_device(self, user_id: str, device_id: str | None) -> int:
        self.generation += 1
        devices = self._index.get(user_id)
        keys = devices.pop(device_id, set()) if devices is not None else set()
        if devices is not None and not devices:
            del self._index[user_id]
        return self._drop(keys)

    def forget_signed_by(self, key_ids: set[str]) -> int:
        """Drop every session a JWT signed with one of these keys opened (the issuer
        no longer publishes them); how many there were."""
        self.generation += 1
        gone = [key for key, session in self.sessions.items() if session[4] in key_ids]
        for key in gone:
            del self.sessions[key]
        return len(gone)

    def forget_user(self, user_id: str) -> int:
        self.generation += 1
        devices = self._index.pop(user_id, {})
        return self._drop(set().union(*devices.values()))

    def _drop(self, keys: set[bytes]) -> int:
        self._indexed -= len(keys)
        return sum(self.sessions.pop(key, None) is not None for key in keys)

    def _add_to_index(self, key: bytes, identity: Identity) -> None:
        if self._indexed >= 2 * self.config.max_size:
            self._reindex()
        keys = self._index.setdefault(identity.user_id, {}).setdefault(identity.device_id, set())
        if key not in keys:
            keys.add(key)
            self._indexed += 1

    def _reindex(self) -> None:
        """Rebuild the index from what the cache still holds."""
        self._index = {}
        self._indexed = 0
        for key, session in list(self.sessions.items()):
            self._add_to_index(key, session[0])


class CachedAuthenticator:
    """Token → :class:`Identity`, through a :class:`TokenCache` and single flight.

    ``namespace`` (:func:`cache_namespace`) keeps the answers of this
    authenticator's mode and issuer apart from any other's in a shared ``cache``
    (which must read the same ``clock``).
    """

    def __init__(
        self,
        verifier: TokenVerifier,
        config: TokenCacheConfig,
        metrics: Metrics | None = None,
        *,
        clock: Clock,
        namespace: bytes = b"",
        cache: TokenCache | None = None,
    ) -> None:
        self._verifier = verifier
        self._namespace = namespace
        if cache is not None and cache.clock is not clock:
            raise ValueError("a shared token cache must read the authenticator's clock")
        self.cache = cache if cache is not None else TokenCache(config, clock)
        self._sessions = self.cache.sessions
        # Bound once: the hit path calls it as cheaply as it would time.monotonic.
        self._monotonic = clock.monotonic
        self._time = clock.time
        self._inflight: SingleFlight[bytes, Verdict] = SingleFlight()
        self.hits = 0  # refusals served from the cache included
        self.negative_hits = 0
        self.misses = 0
        # Sessions served past their freshness because the issuer was unavailable.
        self.stale_hits = 0
        metrics = metrics if metrics is not None else Metrics()
        self._miss = metrics.cache_lookup["miss"]
        self._validations = metrics.validation
        self._report_to(metrics)

    def _report_to(self, metrics: Metrics) -> None:
        """The hot path counts in plain ints (a counter's ``inc`` takes a lock); the
        metrics get the increments when sampled, before each exposition."""
        hit, negative_hit = metrics.cache_lookup["hit"], metrics.cache_lookup["negative_hit"]
        evictions = metrics.token_cache_evictions
        entries = metrics.token_cache_entries
        positive, negative = entries.labels("positive"), entries.labels("negative")
        reported = [0, 0, 0]  # hits, negative hits, evictions

        def sample() -> None:
            counts = (self.hits - self.negative_hits, self.negative_hits, self.cache.evictions)
            for counter, count, done in zip(
                (hit, negative_hit, evictions), counts, reported, strict=True
            ):
                if count > done:
                    counter.inc(count - done)
            reported[:] = counts
            positive.set(len(self.cache.sessions))
            negative.set(len(self.cache.refused))

        metrics.add_sampler(sample)

    @property
    def verifier(self) -> TokenVerifier:
        return self._verifier

    def reconfigure(self, config: TokenCacheConfig) -> None:
        """New bounds, from a reload (:meth:`TokenCache.reconfigure`)."""
        self.cache.reconfigure(config)

    def __len__(self) -> int:
        """Sessions held (refusals are counted apart)."""
        return len(self._sessions)

    def key(self, token: str) -> bytes:
        return token_key(token, self._namespace)

    def cached(self, token: str) -> Identity | None:
        """The identity of a fresh cached session, else None (then :meth:`authenticate`).

        The request hot path: no coroutine, no allocation beyond the digest.
        """
        return self._fresh(token_key(token, self._namespace))

    def _fresh(self, key: bytes) -> Identity | None:
        session = self._sessions.get(key)
        if session is None or session[1] <= self._monotonic():
            return None
        self._sessions.move_to_end(key)
        self.hits += 1
        return session[0]

    async def authenticate(self, token: str) -> Identity:
        """The identity behind ``token``; UnknownToken, Forbidden or IssuerUnavailable otherwise."""
        key = self.key(token)
        identity = self._fresh(key)
        if identity is not None:
            return identity
        refused = self.cache.refused.get(key)
        if refused is not None:
            if refused[1] > self._monotonic():
                self.hits += 1
                self.negative_hits += 1
                return refused[0].identity_or_raise()
            del self.cache.refused[key]
        self.misses += 1
        self._miss.inc()
        log.debug("token cache miss: asking the issuer")
        verdict = await self._inflight.run(key, lambda: self._validate(key, token))
        return verdict.identity_or_raise()

    async def revalidate(self, token: str) -> Identity:
        """Ask the issuer about ``token`` now, whatever the cache holds: before the bridge
        does on its behalf what it cannot undo. The answer is kept or refused as any
        validation's. While the issuer is unavailable, a session this cache holds is
        answered (as stale-if-error answers it); IssuerUnavailable for any other."""
        key = self.key(token)
        verdict = await self._inflight.run(key, lambda: self._validate(key, token))
        return verdict.identity_or_raise()

    def forget(self, token: str) -> float | None:
        """Drop a token (e.g. after logout) so its next use asks the issuer again; its
        ``exp`` (Unix time), where the cache knew it."""
        return self.cache.forget(self.key(token))

    def forget_device(self, user_id: str, device_id: str | None) -> int:
        """Drop every cached session of the device; how many there were."""
        return self.cache.forget_device(user_id, device_id)

    def forget_user(self, user_id: str) -> int:
        """Drop every cached session of every device of the user; how many there were."""
        return self.cache.forget_user(user_id)

    async def _validate(self, key: bytes, token: str) -> Verdict:
        cache = self.cache
        generation = cache.generation
        # Past its freshness (else this would have been a hit), maybe still usable.
        stale = self._sessions.get(key)
        try:
            verdict = await self._verifier.verify(token)
        except IssuerUnavailable as e:
            self._validations["issuer_unavailable"].inc()
            now = self._monotonic()
            if stale is None or stale[2] <= now or self._sessions.get(key) is not stale:
                raise
            # Ask again after the issuer's own Retry-After, never past exp.
            retry = min(now + float(e.headers.get("Retry-After", "5")), stale[2])
            self._sessions[key] = (stale[0], retry, stale[2], stale[3], stale[4])
            self.stale_hits += 1
            return Verdict(stale[0], expires_at=stale[3])
        log.debug("token judged by the issuer: %s", verdict.outcome)
        if verdict.identity is not None:
            self._validations["valid"].inc()
            cache.keep(key, verdict, generation)
            return verdict
        if (
            stale is not None
            and stale[3] is not None
            and stale[3] <= self._time()
            and not verdict.forbidden
        ):
            # A session this cache held has reached its exp: whatever the issuer
            # says now (introspection cannot tell expired from revoked), it expired.
            verdict = dataclasses.replace(
                verdict, reason="Token has expired", soft_logout=True, outcome="expired"
            )
        counter = self._validations.get(verdict.outcome)
        if counter is not None:
            counter.inc()
        cache.refuse(key, verdict)
        return verdict
