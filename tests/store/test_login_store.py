"""The login layer's part of the store, on SQLite and on a real PostgreSQL.

One-time secrets are used once, also by two instances racing for one; nothing
secret lies in clear at rest; refresh tokens are swapped by compare and set;
logout moments are read in order and, on PostgreSQL, announced to another
instance at once; a logout token's jti is taken once; expired rows are swept;
key rotation covers the new sealed columns.
"""

from __future__ import annotations

import asyncio
import time

from bridge.store import LoginSession, LogoutMoment
from tests.store.harness import KEY_A, KEY_B, StoreUnderTest

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
SECRET = "state-8c1d0f6b2a9e4d7c"
PAYLOAD = '{"code_verifier": "verifier-in-clear-would-be-bad"}'
REFRESH = "refresh-token-in-clear-would-be-bad"


async def test_a_secret_is_taken_once(store: StoreUnderTest) -> None:
    s = await store.open()
    now = int(time.time())
    await s.put_secret("sso_state", SECRET, "binding-digest", PAYLOAD, now + 60)
    assert await s.take_secret("login_token", SECRET, now) is None  # another kind
    assert await s.take_secret("sso_state", SECRET, now) == ("binding-digest", PAYLOAD)
    assert await s.take_secret("sso_state", SECRET, now) is None
    assert await s.take_secret("sso_state", "never-put", now) is None


async def test_an_expired_secret_is_refused_and_gone(store: StoreUnderTest) -> None:
    s = await store.open()
    now = int(time.time())
    await s.put_secret("login_token", SECRET, "", PAYLOAD, now + 5)
    assert await s.take_secret("login_token", SECRET, now + 5) is None
    assert await store.fetch("SELECT secret_hash FROM login_secrets") == []


async def test_two_instances_racing_for_one_secret_take_it_once(store: StoreUnderTest) -> None:
    one, two = await store.open(), await store.open()
    now = int(time.time())
    for n in range(20):
        await one.put_secret("login_token", f"{SECRET}-{n}", "", PAYLOAD, now + 60)
    results = await asyncio.gather(
        *(s.take_secret("login_token", f"{SECRET}-{n}", now) for n in range(20) for s in (one, two))
    )
    taken = [r for r in results if r is not None]
    assert len(taken) == 20


async def test_nothing_secret_lies_in_clear(store: StoreUnderTest) -> None:
    s = await store.open()
    await s.put_secret("sso_state", SECRET, "binding", PAYLOAD, int(time.time()) + 60)
    await s.save_session(LoginSession(ALICE, "DEVA", "sub-a", "sid-a", REFRESH))
    await s.use_logout_token_id("jti-in-clear-would-be-bad", int(time.time()) + 60)
    rest = await store.at_rest()
    for secret in (SECRET, "verifier-in-clear", REFRESH, "jti-in-clear"):
        assert secret.encode() not in rest, secret


async def test_sessions(store: StoreUnderTest) -> None:
    s = await store.open()
    await s.save_session(LoginSession(ALICE, "DEVA", "sub-a", "sid-1", REFRESH))
    await s.save_session(LoginSession(ALICE, "DEVB", "sub-a", "sid-2", None))
    await s.save_session(LoginSession(BOB, "DEVC", "sub-b", "sid-1", "bob-refresh"))
    assert await s.session_by_refresh(REFRESH) == LoginSession(
        ALICE, "DEVA", "sub-a", "sid-1", REFRESH
    )
    assert [x.device_id for x in await s.sessions(user_id=ALICE)] == ["DEVA", "DEVB"]
    assert [x.user_id for x in await s.sessions(sid="sid-1")] == [ALICE, BOB]
    assert [x.device_id for x in await s.sessions(sid="sid-1", sub="sub-b")] == ["DEVC"]
    assert [x.device_id for x in await s.sessions(sub="sub-a")] == ["DEVA", "DEVB"]
    taken = await s.take_sessions(ALICE, "DEVA")
    assert taken == [LoginSession(ALICE, "DEVA", "sub-a", "sid-1", REFRESH)]
    assert await s.session_by_refresh(REFRESH) is None
    assert [x.device_id for x in await s.sessions(user_id=ALICE)] == ["DEVB"]
    assert await s.take_sessions(ALICE, "DEVA") == []
    assert [x.device_id for x in await s.take_sessions(ALICE, None)] == ["DEVB"]
    assert [x.user_id for x in await s.sessions(sid="sid-1")] == [BOB]


async def test_a_refresh_token_is_swapped_once(store: StoreUnderTest) -> None:
    one, two = await store.open(), await store.open()
    await one.save_session(LoginSession(ALICE, "DEVA", None, None, REFRESH))
    results = await asyncio.gather(
        one.replace_refresh(ALICE, "DEVA", REFRESH, "new-1"),
        two.replace_refresh(ALICE, "DEVA", REFRESH, "new-2"),
    )
    assert sorted(results) == [False, True]
    winner = "new-1" if results[0] else "new-2"
    assert (await one.session_by_refresh(winner)) is not None
    assert await one.session_by_refresh(REFRESH) is None
    assert not await one.replace_refresh(ALICE, "DEVA", REFRESH, "new-3")


async def test_logout_moments_in_order(store: StoreUnderTest) -> None:
    s = await store.open()
    first = await s.add_logout_moment(ALICE, "DEVA", 100)
    second = await s.add_logout_moment(ALICE, None, 200)
    assert second.seq > first.seq
    assert await s.logout_moments_since(0) == [first, second]
    assert await s.logout_moments_since(first.seq) == [second]
    assert second == LogoutMoment(second.seq, ALICE, None, 200)
    ended = await s.add_logout_moment(ALICE, None, 300, "digest-of-one-token")
    assert await s.logout_moments_since(second.seq) == [
        LogoutMoment(ended.seq, ALICE, None, 300, "digest-of-one-token")
    ]


async def test_another_instance_hears_of_a_moment(store: StoreUnderTest) -> None:
    """PostgreSQL: at once (LISTEN/NOTIFY); SQLite: at its next look."""
    one, two = await store.open(), await store.open()
    heard: list[LogoutMoment] = []
    arrived = asyncio.Event()

    def apply(moments: list[LogoutMoment]) -> None:
        heard.extend(moments)
        if any(m.user_id == BOB for m in moments):
            arrived.set()

    follower = asyncio.create_task(two.follow_logout_moments(apply, interval=0.1))
    try:
        early = await one.add_logout_moment(ALICE, None, 100)
        await asyncio.sleep(0.3)  # the follower is listening (or has looked) by now
        started = time.monotonic()
        token_moment = await one.add_logout_moment(ALICE, None, 150, "digest-of-one-token")
        late = await one.add_logout_moment(BOB, "DEVB", 200)
        await asyncio.wait_for(arrived.wait(), 2)
        assert time.monotonic() - started < 1.0
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
    assert early in heard
    assert token_moment in heard  # its digest too (PostgreSQL: in the announcement)
    assert late in heard


async def test_a_logout_token_id_is_taken_once(store: StoreUnderTest) -> None:
    one, two = await store.open(), await store.open()
    until = int(time.time()) + 60
    results = await asyncio.gather(
        one.use_logout_token_id("jti-1", until), two.use_logout_token_id("jti-1", until)
    )
    assert sorted(results) == [False, True]
    assert await one.use_logout_token_id("jti-2", until)


async def test_sweep(store: StoreUnderTest) -> None:
    s = await store.open()
    now = int(time.time())
    await s.put_secret("sso_state", "old", "", PAYLOAD, now - 1)
    await s.put_secret("sso_state", "new", "", PAYLOAD, now + 60)
    await s.use_logout_token_id("old-jti", now - 1)
    await s.use_logout_token_id("new-jti", now + 60)
    await s.add_logout_moment(ALICE, None, now - 100)
    kept = await s.add_logout_moment(BOB, None, now)
    await s.sweep(now, now - 50)
    assert len(await store.fetch("SELECT secret_hash FROM login_secrets")) == 1
    assert len(await store.fetch("SELECT jti_hash FROM logout_token_ids")) == 1
    assert await s.logout_moments_since(0) == [kept]
    assert not await s.use_logout_token_id("new-jti", now + 60)


async def test_rotate_key_covers_sessions_and_secrets(store: StoreUnderTest) -> None:
    s = await store.open(KEY_A)
    await s.put_secret("sso_state", SECRET, "b", PAYLOAD, int(time.time()) + 60)
    await s.save_session(LoginSession(ALICE, "DEVA", None, None, REFRESH))
    await s.close()
    rotated = await store.open(KEY_B, KEY_A)
    await rotated.rotate_key()
    await rotated.close()
    only_new = await store.open(KEY_B)
    assert (await only_new.session_by_refresh(REFRESH)) is not None
    assert (await only_new.sessions(user_id=ALICE))[0].refresh_token == REFRESH
    assert await only_new.take_secret("sso_state", SECRET, int(time.time())) == ("b", PAYLOAD)
