"""CachedAuthenticator: TTLs, negative caching, single flight, hashed keys."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from bridge.auth import cache
from bridge.auth.cache import CachedAuthenticator, token_key
from bridge.auth.identity import DeviceID, Identity, UserID
from bridge.auth.verifier import Verdict
from bridge.config import TokenCacheConfig
from bridge.errors import IssuerUnavailable, UnknownToken

ALICE = Identity(UserID("@alice:example.org"), DeviceID("ABCDEF"), "alice")
VALID = Verdict(ALICE)
WALL = 1_700_000_000.0


class Clock:
    """Stands in for the ``time`` module inside bridge.auth.cache."""

    def __init__(self) -> None:
        self.elapsed = 0.0

    def monotonic(self) -> float:
        return 1000.0 + self.elapsed

    def time(self) -> float:
        return WALL + self.elapsed

    def advance(self, seconds: float) -> None:
        self.elapsed += seconds


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    # Replace the module's reference only: the event loop keeps the real clock.
    monkeypatch.setattr(cache, "time", SimpleNamespace(monotonic=fake.monotonic, time=fake.time))
    return fake


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


def authenticator(verifier: FakeVerifier, **config: Any) -> CachedAuthenticator:
    return CachedAuthenticator(verifier, TokenCacheConfig(**config))


async def until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until ``condition()`` holds."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def test_second_call_is_a_hit() -> None:
    verifier = FakeVerifier()
    auth = authenticator(verifier)
    assert await auth.authenticate("tok") == ALICE
    assert await auth.authenticate("tok") == ALICE
    assert verifier.calls == 1
    assert (auth.hits, auth.misses) == (1, 1)


async def test_concurrent_validations_share_one_call() -> None:
    verifier = FakeVerifier()
    verifier.gate = asyncio.Event()
    auth = authenticator(verifier)
    tasks = [asyncio.create_task(auth.authenticate("fresh")) for _ in range(50)]
    await until(lambda: verifier.calls == 1)
    verifier.gate.set()
    assert await asyncio.gather(*tasks) == [ALICE] * 50
    assert verifier.calls == 1


async def test_issuer_failure_is_shared_and_not_cached() -> None:
    verifier = FakeVerifier()
    verifier.gate = asyncio.Event()
    verifier.error = IssuerUnavailable("issuer down")
    auth = authenticator(verifier)
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


async def test_negative_verdict_is_cached_for_negative_ttl(clock: Clock) -> None:
    verifier = FakeVerifier(Verdict(None, "Token is not active"))
    auth = authenticator(verifier, negative_ttl=10)
    for _ in range(2):
        with pytest.raises(UnknownToken, match="not active"):
            await auth.authenticate("bad")
    assert verifier.calls == 1
    clock.advance(10.5)
    with pytest.raises(UnknownToken):
        await auth.authenticate("bad")
    assert verifier.calls == 2


async def test_negative_ttl_zero_caches_nothing() -> None:
    verifier = FakeVerifier(Verdict(None, "Token is not active"))
    auth = authenticator(verifier, negative_ttl=0)
    for _ in range(2):
        with pytest.raises(UnknownToken):
            await auth.authenticate("bad")
    assert verifier.calls == 2
    assert len(auth) == 0


async def test_positive_ttl_is_bounded_by_token_expiry(clock: Clock) -> None:
    verifier = FakeVerifier(Verdict(ALICE, expires_at=WALL + 1))
    auth = authenticator(verifier, max_ttl=300)
    await auth.authenticate("tok")
    clock.advance(0.5)
    await auth.authenticate("tok")
    assert verifier.calls == 1
    clock.advance(0.6)
    await auth.authenticate("tok")
    assert verifier.calls == 2


async def test_positive_ttl_is_bounded_by_max_ttl(clock: Clock) -> None:
    verifier = FakeVerifier(Verdict(ALICE, expires_at=WALL + 3600))
    auth = authenticator(verifier, max_ttl=300)
    await auth.authenticate("tok")
    clock.advance(299)
    await auth.authenticate("tok")
    assert verifier.calls == 1
    clock.advance(2)
    await auth.authenticate("tok")
    assert verifier.calls == 2


async def test_already_expired_verdict_is_not_cached() -> None:
    # The verifier allows some clock skew, so it may accept a token just past exp.
    verifier = FakeVerifier(Verdict(ALICE, expires_at=WALL - 5))
    auth = authenticator(verifier)
    await auth.authenticate("tok")
    await auth.authenticate("tok")
    assert verifier.calls == 2


async def test_keys_are_sha256_digests() -> None:
    token = "syt_secret_token"
    auth = authenticator(FakeVerifier())
    await auth.authenticate(token)
    keys = list(auth._cache.keys())
    assert token.encode() not in keys
    assert keys == [token_key(token)]
    assert token_key(token) == hashlib.sha256(token.encode()).digest()


async def test_cache_is_bounded() -> None:
    auth = authenticator(FakeVerifier(), max_size=2)
    for token in ("a", "b", "c"):
        await auth.authenticate(token)
    assert len(auth) == 2


async def test_forget() -> None:
    verifier = FakeVerifier()
    auth = authenticator(verifier)
    await auth.authenticate("tok")
    auth.forget("tok")
    auth.forget("never-seen")
    await auth.authenticate("tok")
    assert verifier.calls == 2


async def test_cancelled_waiter_does_not_cancel_the_others() -> None:
    verifier = FakeVerifier()
    verifier.gate = asyncio.Event()
    auth = authenticator(verifier)
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


async def test_verification_finishes_when_every_waiter_leaves() -> None:
    verifier = FakeVerifier()
    verifier.gate = asyncio.Event()
    auth = authenticator(verifier)
    task = asyncio.create_task(auth.authenticate("tok"))
    await until(lambda: verifier.calls == 1)
    task.cancel()
    verifier.gate.set()
    await until(lambda: len(auth) == 1)
    assert await auth.authenticate("tok") == ALICE
    assert verifier.calls == 1


async def test_inactive_tokens_never_evict_a_live_session() -> None:
    """Garbage is kept in its own bounded cache (security finding 5)."""

    class Verifier(FakeVerifier):
        async def verify(self, token: str) -> Verdict:
            self.calls += 1
            return VALID if token == "live" else Verdict(None, "Token is not active")

    verifier = Verifier()
    auth = authenticator(verifier, max_size=1, negative_max_size=100)
    await auth.authenticate("live")
    for n in range(1_000):
        with pytest.raises(UnknownToken):
            await auth.authenticate(f"garbage-{n}")
    assert len(auth._negative) == 100
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


async def test_forget_device_drops_every_session_of_that_device_only() -> None:
    verifier = PerTokenVerifier()
    auth = authenticator(verifier)
    tokens = ["alice/DEVA/1", "alice/DEVA/2", "alice/DEVB/1", "bob/DEVA/1"]
    for token in tokens:
        await auth.authenticate(token)
    assert auth.forget_device("@alice:example.org", "DEVA") == 2
    assert auth.forget_device("@alice:example.org", "DEVA") == 0
    assert auth.forget_device("@nobody:example.org", "DEVA") == 0
    for token in tokens:
        await auth.authenticate(token)
    assert verifier.calls == 4 + 2  # only alice's DEVA sessions were asked about again


async def test_forget_user_drops_every_device_of_that_user_only() -> None:
    verifier = PerTokenVerifier()
    auth = authenticator(verifier)
    tokens = ["alice/DEVA/1", "alice/DEVB/1", "bob/DEVA/1"]
    for token in tokens:
        await auth.authenticate(token)
    assert auth.forget_user("@alice:example.org") == 2
    assert auth.forget_user("@alice:example.org") == 0
    for token in tokens:
        await auth.authenticate(token)
    assert verifier.calls == 3 + 2


async def test_a_verification_running_while_its_device_is_forgotten_is_not_cached() -> None:
    verifier = PerTokenVerifier()
    verifier.gate = asyncio.Event()
    auth = authenticator(verifier)
    task = asyncio.create_task(auth.authenticate("alice/DEVA/1"))
    await until(lambda: verifier.calls == 1)
    auth.forget_device("@alice:example.org", "DEVA")
    verifier.gate.set()
    assert (await task).device_id == "DEVA"  # answered, but not kept
    assert len(auth) == 0


async def test_the_index_stays_bounded_when_the_cache_evicts() -> None:
    verifier = PerTokenVerifier()
    auth = authenticator(verifier, max_size=3)
    for n in range(100):
        await auth.authenticate(f"user{n}/DEV/1")
    assert len(auth) == 3
    assert auth._indexed <= 2 * 3
    assert sum(len(keys) for d in auth._sessions.values() for keys in d.values()) <= 2 * 3
    # The sessions still cached are still indexed.
    assert auth.forget_user("@user99:example.org") == 1
