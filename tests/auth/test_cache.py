"""CachedAuthenticator: TTLs, negative caching, stale-if-error, single flight, hashed keys."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from bridge.auth.cache import CachedAuthenticator, TokenCache, cache_namespace, token_key
from bridge.auth.identity import DeviceID, Identity, UserID
from bridge.auth.verifier import Verdict
from bridge.config import TokenCacheConfig
from bridge.errors import IssuerUnavailable, UnknownToken
from tests.support.clock import FakeClock

ALICE = Identity(UserID("@alice:example.org"), DeviceID("ABCDEF"), "alice")
VALID = Verdict(ALICE)
WALL = 1_700_000_000.0


@pytest.fixture
def clock() -> FakeClock:
    """The cache's clock (the event loop keeps the real one)."""
    return FakeClock(WALL)


class FakeVerifier:
    """Counts calls; optionally waits for ``gate`` and raises ``error``."""

    def __init__(self, verdict: Verdict = VALID) -> None:
        self.verdict = verdict
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.error: Exception | None = None

    async def verify(self, token: str) -> Verdict:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.verdict


def authenticator(clock: FakeClock, verifier: FakeVerifier, **config: Any) -> CachedAuthenticator:
    return CachedAuthenticator(verifier, TokenCacheConfig(**config), clock=clock)


async def refused(auth: CachedAuthenticator, token: str) -> UnknownToken:
    with pytest.raises(UnknownToken) as info:
        await auth.authenticate(token)
    return info.value


async def until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until ``condition()`` holds."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def test_second_call_is_a_hit(clock: FakeClock) -> None:
    verifier = FakeVerifier()
    auth = authenticator(clock, verifier)
    assert await auth.authenticate("tok") == ALICE
    assert await auth.authenticate("tok") == ALICE
    assert verifier.calls == 1
    assert (auth.hits, auth.misses) == (1, 1)


async def test_concurrent_validations_share_one_call(clock: FakeClock) -> None:
    verifier = FakeVerifier()
    verifier.gate = asyncio.Event()
    auth = authenticator(clock, verifier)
    tasks = [asyncio.create_task(auth.authenticate("fresh")) for _ in range(50)]
    await until(lambda: verifier.calls == 1)
    verifier.gate.set()
    assert await asyncio.gather(*tasks) == [ALICE] * 50
    assert verifier.calls == 1


async def test_issuer_failure_is_shared_and_not_cached(clock: FakeClock) -> None:
    verifier = FakeVerifier()
    verifier.gate = asyncio.Event()
    verifier.error = IssuerUnavailable("issuer down")
    auth = authenticator(clock, verifier)
    tasks = [asyncio.create_task(auth.authenticate("tok")) for _ in range(5)]
    await until(lambda: verifier.calls == 1)
    verifier.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, IssuerUnavailable) for r in results)
    assert verifier.calls == 1
    assert len(auth) == 0

    verifier.error = None
    assert await auth.authenticate("tok") == ALICE
    assert verifier.calls == 2


async def test_negative_verdict_is_cached_for_negative_ttl(clock: FakeClock) -> None:
    verifier = FakeVerifier(Verdict(None, "Token is not active"))
    auth = authenticator(clock, verifier, negative_ttl=10)
    for _ in range(2):
        with pytest.raises(UnknownToken, match="not active"):
            await auth.authenticate("bad")
    assert verifier.calls == 1
    clock.advance(10.5)
    with pytest.raises(UnknownToken):
        await auth.authenticate("bad")
    assert verifier.calls == 2


async def test_negative_ttl_zero_caches_nothing(clock: FakeClock) -> None:
    verifier = FakeVerifier(Verdict(None, "Token is not active"))
    auth = authenticator(clock, verifier, negative_ttl=0)
    for _ in range(2):
        with pytest.raises(UnknownToken):
            await auth.authenticate("bad")
    assert verifier.calls == 2
    assert len(auth) == 0


async def test_positive_ttl_is_bounded_by_token_expiry(clock: FakeClock) -> None:
    verifier = FakeVerifier(Verdict(ALICE, expires_at=WALL + 1))
    auth = authenticator(clock, verifier, max_ttl=300)
    await auth.authenticate("tok")
    clock.advance(0.5)
    await auth.authenticate("tok")
    assert verifier.calls == 1
    clock.advance(0.6)
    await auth.authenticate("tok")
    assert verifier.calls == 2


async def test_positive_ttl_is_bounded_by_max_ttl(clock: FakeClock) -> None:
    verifier = FakeVerifier(Verdict(ALICE, expires_at=WALL + 3600))
    auth = authenticator(clock, verifier, max_ttl=300)
    await auth.authenticate("tok")
    clock.advance(299)
    await auth.authenticate("tok")
    assert verifier.calls == 1
    clock.advance(2)
    await auth.authenticate("tok")
    assert verifier.calls == 2


async def test_already_expired_verdict_is_not_cached(clock: FakeClock) -> None:
    # The verifier allows some clock skew, so it may accept a token just past exp.
    verifier = FakeVerifier(Verdict(ALICE, expires_at=WALL - 5))
    auth = authenticator(clock, verifier)
    await auth.authenticate("tok")
    await auth.authenticate("tok")
    assert verifier.calls == 2


async def test_keys_are_sha256_digests_of_mode_issuer_and_token(clock: FakeClock) -> None:
    token = "syt_secret_token"
    namespace = cache_namespace("introspection", "https://issuer.example/")
    auth = CachedAuthenticator(FakeVerifier(), TokenCacheConfig(), clock=clock, namespace=namespace)
    await auth.authenticate(token)
    keys = list(auth.cache.sessions.keys())
    assert token.encode() not in keys
    assert keys == [token_key(token, namespace)]
    expected = hashlib.sha256(b"introspection\0https://issuer.example/\0" + token.encode())
    assert keys == [expected.digest()]


async def test_cache_is_bounded(clock: FakeClock) -> None:
    auth = authenticator(clock, FakeVerifier(), max_size=2)
    for token in ("a", "b", "c"):
        await auth.authenticate(token)
    assert len(auth) == 2


async def test_forget(clock: FakeClock) -> None:
    verifier = FakeVerifier()
    auth = authenticator(clock, verifier)
    await auth.authenticate("tok")
    auth.forget("tok")
    auth.forget("never-seen")
    await auth.authenticate("tok")
    assert verifier.calls == 2


async def test_cancelled_waiter_does_not_cancel_the_others(clock: FakeClock) -> None:
    verifier = FakeVerifier()
    verifier.gate = asyncio.Event()
    auth = authenticator(clock, verifier)
    quitter = asyncio.create_task(auth.authenticate("tok"))
    stayer = asyncio.create_task(auth.authenticate("tok"))
    await until(lambda: verifier.calls == 1)
    quitter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await quitter
    verifier.gate.set()
    assert await stayer == ALICE
    assert verifier.calls == 1
    assert len(auth) == 1


async def test_verification_finishes_when_every_waiter_leaves(clock: FakeClock) -> None:
    verifier = FakeVerifier()
    verifier.gate = asyncio.Event()
    auth = authenticator(clock, verifier)
    task = asyncio.create_task(auth.authenticate("tok"))
    await until(lambda: verifier.calls == 1)
    task.cancel()
    verifier.gate.set()
    await until(lambda: len(auth) == 1)
    assert await auth.authenticate("tok") == ALICE
    assert verifier.calls == 1


async def test_inactive_tokens_never_evict_a_live_session(clock: FakeClock) -> None:
    """Garbage is kept in its own bounded cache (security finding 5)."""

    class Verifier(FakeVerifier):
        async def verify(self, token: str) -> Verdict:
            self.calls += 1
            return VALID if token == "live" else Verdict(None, "Token is not active")

    verifier = Verifier()
    auth = authenticator(clock, verifier, max_size=1, negative_max_size=100)
    await auth.authenticate("live")
    for n in range(1_000):
        with pytest.raises(UnknownToken):
            await auth.authenticate(f"garbage-{n}")
    assert len(auth.cache.refused) == 100
    assert await auth.authenticate("live") == ALICE
    assert verifier.calls == 1 + 1_000  # the live session was a hit


class PerTokenVerifier(FakeVerifier):
    """Token ``user/device/n`` is a session of ``@user:example.org`` on ``device``."""

    async def verify(self, token: str) -> Verdict:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        user, device, _n = token.split("/")
        return Verdict(Identity(UserID(f"@{user}:example.org"), DeviceID(device), user))


async def test_forget_device_drops_every_session_of_that_device_only(clock: FakeClock) -> None:
    verifier = PerTokenVerifier()
    auth = authenticator(clock, verifier)
    tokens = ["alice/DEVA/1", "alice/DEVA/2", "alice/DEVB/1", "bob/DEVA/1"]
    for token in tokens:
        await auth.authenticate(token)
    assert auth.forget_device("@alice:example.org", "DEVA") == 2
    assert auth.forget_device("@alice:example.org", "DEVA") == 0
    assert auth.forget_device("@nobody:example.org", "DEVA") == 0
    for token in tokens:
        await auth.authenticate(token)
    assert verifier.calls == 4 + 2  # only alice's DEVA sessions were asked about again


async def test_forget_user_drops_every_device_of_that_user_only(clock: FakeClock) -> None:
    verifier = PerTokenVerifier()
    auth = authenticator(clock, verifier)
    tokens = ["alice/DEVA/1", "alice/DEVB/1", "bob/DEVA/1"]
    for token in tokens:
        await auth.authenticate(token)
    assert auth.forget_user("@alice:example.org") == 2
    assert auth.forget_user("@alice:example.org") == 0
    for token in tokens:
        await auth.authenticate(token)
    assert verifier.calls == 3 + 2


async def test_a_verification_running_while_its_device_is_forgotten_is_not_cached(
    clock: FakeClock,
) -> None:
    verifier = PerTokenVerifier()
    verifier.gate = asyncio.Event()
    auth = authenticator(clock, verifier)
    task = asyncio.create_task(auth.authenticate("alice/DEVA/1"))
    await until(lambda: verifier.calls == 1)
    auth.forget_device("@alice:example.org", "DEVA")
    verifier.gate.set()
    assert (await task).device_id == "DEVA"  # answered, but not kept
    assert len(auth) == 0


async def test_the_index_stays_bounded_when_the_cache_evicts(clock: FakeClock) -> None:
    verifier = PerTokenVerifier()
    auth = authenticator(clock, verifier, max_size=3)
    for n in range(100):
        await auth.authenticate(f"user{n}/DEV/1")
    assert len(auth) == 3
    assert auth.cache._indexed <= 2 * 3
    assert sum(len(keys) for d in auth.cache._index.values() for keys in d.values()) <= 2 * 3
    # The sessions still cached are still indexed.
    assert auth.forget_user("@user99:example.org") == 1


# ---------------------------------------------------------------------------------------
# The policy the README states, with a controlled clock


class ScriptedVerifier(FakeVerifier):
    """Answers with ``verdicts`` in turn (the last one again once they run out)."""

    def __init__(self, *verdicts: Verdict | Exception) -> None:
        super().__init__()
        self.script = list(verdicts)

    async def verify(self, token: str) -> Verdict:
        self.calls += 1
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_a_hit_never_extends_an_entry_and_ttl_never_outlives_exp(clock: FakeClock) -> None:
    verifier = FakeVerifier(Verdict(ALICE, expires_at=WALL + 50))
    auth = authenticator(clock, verifier, max_ttl=120, stale_if_error=False)
    await auth.authenticate("tok")
    for _ in range(49):  # a hit every second: none of them moves the deadline
        clock.advance(1)
        assert auth.cached("tok") == ALICE
    clock.advance(1)  # exp: 50 s after validation, well before max_ttl
    assert auth.cached("tok") is None
    await auth.authenticate("tok")
    assert verifier.calls == 2


async def test_max_ttl_bounds_a_long_lived_token_and_a_hit_does_not_extend_it(
    clock: FakeClock,
) -> None:
    verifier = FakeVerifier(Verdict(ALICE, expires_at=WALL + 3600))
    auth = authenticator(clock, verifier, max_ttl=120)
    await auth.authenticate("tok")
    clock.advance(119.9)
    assert auth.cached("tok") == ALICE
    clock.advance(0.2)
    assert auth.cached("tok") is None
    assert await auth.authenticate("tok") == ALICE
    assert verifier.calls == 2


async def test_default_max_ttl_is_synapses_120_seconds() -> None:
    assert TokenCacheConfig().max_ttl == 120


async def test_inactive_then_active_is_checked_again_after_the_negative_ttl(
    clock: FakeClock,
) -> None:
    verifier = ScriptedVerifier(Verdict(None, "Token is not active"), VALID)
    auth = authenticator(clock, verifier, negative_ttl=10)
    await refused(auth, "tok")
    clock.advance(9)
    await refused(auth, "tok")  # still the refusal, from the cache
    assert verifier.calls == 1
    clock.advance(1.5)
    assert await auth.authenticate("tok") == ALICE
    assert verifier.calls == 2


async def test_a_second_issuer_or_mode_never_reads_anothers_answers(clock: FakeClock) -> None:
    shared = TokenCache(TokenCacheConfig(), clock)
    verifiers = [FakeVerifier() for _ in range(3)]
    namespaces = [
        cache_namespace("introspection", "https://one.example/"),
        cache_namespace("introspection", "https://two.example/"),
        cache_namespace("jwt", "https://one.example/"),
    ]
    auths = [
        CachedAuthenticator(v, shared.config, clock=clock, namespace=n, cache=shared)
        for v, n in zip(verifiers, namespaces, strict=True)
    ]
    for auth in auths:
        assert await auth.authenticate("same-token") == ALICE
        assert await auth.authenticate("same-token") == ALICE
    assert [v.calls for v in verifiers] == [1, 1, 1]
    assert len(shared.sessions) == 3


async def test_a_refusal_under_one_issuer_does_not_refuse_under_another(clock: FakeClock) -> None:
    shared = TokenCache(TokenCacheConfig(), clock)
    bad = CachedAuthenticator(
        FakeVerifier(Verdict(None, "Token is not active")),
        shared.config,
        clock=clock,
        namespace=cache_namespace("introspection", "https://one.example/"),
        cache=shared,
    )
    good = CachedAuthenticator(
        FakeVerifier(),
        shared.config,
        clock=clock,
        namespace=cache_namespace("introspection", "https://two.example/"),
        cache=shared,
    )
    await refused(bad, "tok")
    assert await good.authenticate("tok") == ALICE


def test_a_shared_cache_must_read_the_authenticators_clock(clock: FakeClock) -> None:
    shared = TokenCache(TokenCacheConfig(), clock)
    with pytest.raises(ValueError, match="clock"):
        CachedAuthenticator(FakeVerifier(), shared.config, clock=FakeClock(WALL), cache=shared)


@pytest.mark.parametrize(
    "failure",
    [
        IssuerUnavailable("timeout"),
        IssuerUnavailable("HTTP 500"),
        IssuerUnavailable("HTTP 429", retry_after=30),
        IssuerUnavailable("connection refused"),
        IssuerUnavailable("invalid JSON"),
    ],
)
async def test_stale_session_is_served_while_the_issuer_fails_until_exp_never_beyond(
    clock: FakeClock, failure: IssuerUnavailable
) -> None:
    verifier = ScriptedVerifier(Verdict(ALICE, expires_at=WALL + 600), failure)
    auth = authenticator(clock, verifier, max_ttl=120)
    await auth.authenticate("tok")
    clock.advance(121)  # past its freshness, 479 s before exp
    assert auth.cached("tok") is None
    assert await auth.authenticate("tok") == ALICE  # the issuer failed: served stale
    assert verifier.calls == 2
    assert auth.stale_hits == 1
    # Not asked again before the failure's Retry-After ...
    retry = int(failure.headers["Retry-After"])
    assert await auth.authenticate("tok") == ALICE
    assert verifier.calls == 2
    clock.advance(retry)
    assert await auth.authenticate("tok") == ALICE
    assert verifier.calls == 3
    # ... and never past the token's own exp.
    clock.advance(600 - 121 - retry)
    with pytest.raises(IssuerUnavailable):
        await auth.authenticate("tok")
    assert len(auth) == 1  # nothing was refused or kept anew: the failure is not cached


async def test_stale_if_error_off_gives_503_after_max_ttl(clock: FakeClock) -> None:
    verifier = ScriptedVerifier(Verdict(ALICE, expires_at=WALL + 600), IssuerUnavailable("down"))
    auth = authenticator(clock, verifier, max_ttl=120, stale_if_error=False)
    await auth.authenticate("tok")
    clock.advance(121)
    with pytest.raises(IssuerUnavailable):
        await auth.authenticate("tok")


async def test_a_session_without_exp_is_never_served_stale(clock: FakeClock) -> None:
    verifier = ScriptedVerifier(Verdict(ALICE), IssuerUnavailable("down"))
    auth = authenticator(clock, verifier, max_ttl=120)
    await auth.authenticate("tok")
    clock.advance(121)
    with pytest.raises(IssuerUnavailable):
        await auth.authenticate("tok")


async def test_stale_session_is_revalidated_once_the_issuer_answers(clock: FakeClock) -> None:
    verifier = ScriptedVerifier(
        Verdict(ALICE, expires_at=WALL + 600),
        IssuerUnavailable("down"),
        Verdict(None, "Token is not active"),
    )
    auth = authenticator(clock, verifier, max_ttl=120)
    await auth.authenticate("tok")
    clock.advance(121)
    assert await auth.authenticate("tok") == ALICE  # stale
    clock.advance(5)
    error = await refused(auth, "tok")  # revoked meanwhile: the issuer says so now
    assert error.soft_logout is False
    assert len(auth) == 0


async def test_soft_logout_for_a_token_that_expired_false_for_an_unknown_one(
    clock: FakeClock,
) -> None:
    verifier = ScriptedVerifier(
        Verdict(ALICE, expires_at=WALL + 60), Verdict(None, "Token is not active")
    )
    auth = authenticator(clock, verifier, max_ttl=120)
    await auth.authenticate("tok")
    clock.advance(61)
    # Introspection cannot tell expired from revoked; the cache knew the exp.
    error = await refused(auth, "tok")
    assert error.soft_logout is True
    assert error.to_response().text is not None
    assert '"soft_logout": true' in error.to_response().text
    never_seen = await refused(auth, "other")
    assert never_seen.soft_logout is False


async def test_verdict_soft_logout_reaches_the_error(clock: FakeClock) -> None:
    auth = authenticator(clock, FakeVerifier(Verdict(None, "Token has expired", soft_logout=True)))
    assert (await refused(auth, "tok")).soft_logout is True


async def test_least_recently_used_session_is_evicted_first(clock: FakeClock) -> None:
    verifier = PerTokenVerifier()
    auth = authenticator(clock, verifier, max_size=2)
    await auth.authenticate("a/D/1")
    await auth.authenticate("b/D/1")
    assert auth.cached("a/D/1") is not None  # a is now the most recently used
    await auth.authenticate("c/D/1")
    assert auth.cached("a/D/1") is not None
    assert auth.cached("b/D/1") is None
    assert verifier.calls == 3


async def test_refusals_are_bounded_oldest_out_first(clock: FakeClock) -> None:
    verifier = FakeVerifier(Verdict(None, "Token is not active"))
    auth = authenticator(clock, verifier, negative_max_size=3)
    for n in range(5):
        await refused(auth, f"bad-{n}")
    assert list(auth.cache.refused) == [auth.key(f"bad-{n}") for n in (2, 3, 4)]


async def test_cached_is_the_hit_path_and_misses_go_to_authenticate(clock: FakeClock) -> None:
    verifier = FakeVerifier()
    auth = authenticator(clock, verifier)
    assert auth.cached("tok") is None
    assert verifier.calls == 0
    await auth.authenticate("tok")
    assert auth.cached("tok") == ALICE
    assert verifier.calls == 1


async def test_device_less_sessions_are_indexed_and_forgotten(clock: FakeClock) -> None:
    no_device = Identity(UserID("@alice:example.org"), None, "alice")
    auth = authenticator(clock, FakeVerifier(Verdict(no_device)))
    await auth.authenticate("tok")
    assert auth.forget_device("@alice:example.org", None) == 1
    assert auth.cached("tok") is None


async def test_metrics_count_hits_refusals_and_live_sessions_pushed_out(clock: FakeClock) -> None:
    from bridge.ops.metrics import Metrics

    metrics = Metrics()
    auth = CachedAuthenticator(FakeVerifier(), TokenCacheConfig(max_size=1), metrics, clock=clock)
    await auth.authenticate("one")
    await auth.authenticate("one")
    await auth.authenticate("two")  # pushes one, still live, out
    refusing = CachedAuthenticator(
        FakeVerifier(Verdict(None, "no")), TokenCacheConfig(), metrics, clock=clock
    )
    for _ in range(3):
        await refused(refusing, "bad")
    metrics.sample()
    lookups = {r: metrics.cache_lookup[r]._value.get() for r in ("hit", "negative_hit", "miss")}
    assert lookups == {"hit": 1, "negative_hit": 2, "miss": 3}
    assert metrics.token_cache_evictions._value.get() == 1
    metrics.sample()  # a second sample adds nothing new
    assert metrics.cache_lookup["hit"]._value.get() == 1


async def test_reconfigure_keeps_live_sessions_cut_to_the_new_bounds(clock: FakeClock) -> None:
    verifier = FakeVerifier()
    auth = authenticator(clock, verifier, max_size=3, max_ttl=300)
    for token in ("a", "b", "c"):
        await auth.authenticate(token)
    refusing_verdict = Verdict(None, "no")
    auth.cache.refuse(auth.key("bad"), refusing_verdict)
    auth.reconfigure(TokenCacheConfig(max_size=2, max_ttl=60))
    assert len(auth) == 2
    assert not auth.cache.refused
    assert auth.cached("a") is None  # the least recently used went
    assert auth.cached("c") == ALICE
    clock.advance(61)
    assert auth.cached("c") is None  # fresh for the new max_ttl only
