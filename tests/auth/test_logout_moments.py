"""Logout moments: which tokens they refuse, in memory."""

from __future__ import annotations

from bridge.auth.identity import DEVICE_ID, DeviceID, Identity, UserID
from bridge.auth.logout_moments import TOKEN_MOMENT_DEVICE, LogoutMoments
from bridge.store import LogoutMoment
from bridge.store.records import digest
from tests.support.clock import FakeClock

ALICE = "@alice:example.org"


def token(
    device: str | None = "DEVA",
    iat: float | None = 1000.0,
    user: str = ALICE,
    bearer: str = "a-token",
) -> tuple[Identity, str]:
    """A token's identity, and the token."""
    device_id = None if device is None else DeviceID(device)
    return Identity(UserID(user), device_id, user[1:].split(":")[0], issued_at=iat), bearer


def test_a_logout_now_is_dated_by_the_clock_in_whole_seconds() -> None:
    clock = FakeClock(1_800_000_000.75)
    moments = LogoutMoments(clock)
    assert moments.now() == 1_800_000_000
    clock.advance(0.5)
    assert moments.now() == 1_800_000_001


def test_nothing_is_refused_without_moments() -> None:
    moments = LogoutMoments(FakeClock())
    assert not moments.refuses(*token())
    assert not moments.refuses(*token(iat=None))


def test_a_device_moment_refuses_that_devices_earlier_tokens_only() -> None:
    moments = LogoutMoments(FakeClock())
    moments.apply([LogoutMoment(1, ALICE, "DEVA", 1000)])
    assert moments.refuses(*token("DEVA", 999))
    assert moments.refuses(*token("DEVA", 1000))  # the same second: refused
    assert not moments.refuses(*token("DEVA", 1001))
    assert not moments.refuses(*token("DEVB", 500))
    assert not moments.refuses(*token("DEVA", 500, user="@bob:example.org"))


def test_a_user_moment_refuses_every_device() -> None:
    moments = LogoutMoments(FakeClock())
    moments.apply([LogoutMoment(1, ALICE, None, 1000)])
    assert moments.refuses(*token("DEVA", 999))
    assert moments.refuses(*token("ANY", 1000))
    assert not moments.refuses(*token("ANY", 1001))


def test_a_token_without_iat_is_refused_once_a_moment_covers_it() -> None:
    moments = LogoutMoments(FakeClock())
    moments.apply([LogoutMoment(1, ALICE, "DEVA", 1000)])
    assert moments.refuses(*token("DEVA", None))
    assert not moments.refuses(*token("DEVB", None))


def test_the_latest_moment_wins_in_any_order_and_each_change_is_told() -> None:
    told: list[tuple[str, str | None]] = []
    moments = LogoutMoments(FakeClock(), on_logout=lambda user, device: told.append((user, device)))
    moments.apply([LogoutMoment(2, ALICE, None, 2000), LogoutMoment(1, ALICE, None, 1000)])
    moments.apply([LogoutMoment(2, ALICE, None, 2000)])  # heard twice (NOTIFY and a reload)
    assert moments.refuses(*token(iat=1500))
    assert told == [(ALICE, None)]
    assert moments.seen == 2


def test_prune() -> None:
    moments = LogoutMoments(FakeClock())
    moments.apply([LogoutMoment(1, ALICE, None, 1000), LogoutMoment(2, ALICE, "DEVA", 3000)])
    moments.prune(2000)
    assert not moments.refuses(*token("DEVB", 500))
    assert moments.refuses(*token("DEVA", 2500))
    assert len(moments) == 1


def test_a_token_moment_refuses_that_device_less_token_only_whenever_issued() -> None:
    told: list[tuple[str, str | None]] = []
    moments = LogoutMoments(FakeClock(), on_logout=lambda user, device: told.append((user, device)))
    moments.apply([LogoutMoment(1, ALICE, TOKEN_MOMENT_DEVICE, 1000, digest("ended"))])
    assert moments.refuses(*token(None, 5000, bearer="ended"))  # issued after: still ended
    assert moments.refuses(*token(None, None, bearer="ended"))
    assert not moments.refuses(*token(None, 500, bearer="another"))  # the user's other tokens
    assert not moments.refuses(*token("DEVA", 500, bearer="another"))
    assert not moments.refuses(*token(None, 500, user="@bob:example.org", bearer="ended"))
    assert told == []  # not a user moment: the user's sessions stay cached
    moments.prune(2000)
    assert not moments.refuses(*token(None, 5000, bearer="ended"))
    assert len(moments) == 0


def test_a_bridge_that_knows_no_token_moments_reads_one_as_a_device_nobody_has() -> None:
    """A rolling upgrade: an older bridge sees the moment's row without its digest."""
    assert not DEVICE_ID.fullmatch(TOKEN_MOMENT_DEVICE)
    older = LogoutMoments(FakeClock())
    older.apply([LogoutMoment(1, ALICE, TOKEN_MOMENT_DEVICE, 1000)])
    assert not older.refuses(*token("DEVA", 500))
    assert not older.refuses(*token(None, 500))
