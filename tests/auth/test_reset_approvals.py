"""Cross-signing reset approvals: a window per user, one master-key replacement each."""

from __future__ import annotations

import pytest

from bridge.auth import reset_approvals
from bridge.auth.reset_approvals import CrossSigningResetApprovals

ALICE = "@alice:example.org"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_closed_until_allowed_and_open_for_the_window() -> None:
    clock = Clock()
    approvals = CrossSigningResetApprovals(clock)
    assert not approvals.is_open(ALICE)
    approvals.allow(ALICE)
    assert approvals.is_open(ALICE)
    assert not approvals.is_open("@bob:example.org")
    clock.now += reset_approvals.RESET_WINDOW - 1
    assert approvals.is_open(ALICE)
    clock.now += 1
    assert not approvals.is_open(ALICE)
    assert approvals.consume(ALICE) is None


def test_one_approval_is_one_replacement() -> None:
    approvals = CrossSigningResetApprovals(Clock())
    approvals.allow(ALICE)
    assert approvals.consume(ALICE) is not None
    assert not approvals.is_open(ALICE)
    assert approvals.consume(ALICE) is None


def test_a_failed_replacement_gives_the_approval_back() -> None:
    clock = Clock()
    approvals = CrossSigningResetApprovals(clock)
    approvals.allow(ALICE)
    until = approvals.consume(ALICE)
    assert until is not None
    approvals.restore(ALICE, until)
    assert approvals.is_open(ALICE)
    clock.now = until
    assert not approvals.is_open(ALICE)


def test_window_is_read_at_each_approval(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    approvals = CrossSigningResetApprovals(clock)
    monkeypatch.setattr(reset_approvals, "RESET_WINDOW", 5.0)
    approvals.allow(ALICE)
    clock.now += 5
    assert not approvals.is_open(ALICE)


def test_revoke_and_expired_approvals_are_dropped() -> None:
    clock = Clock()
    approvals = CrossSigningResetApprovals(clock)
    approvals.allow(ALICE)
    approvals.revoke(ALICE)
    assert not approvals.is_open(ALICE)
    approvals.allow(ALICE)
    clock.now += reset_approvals.RESET_WINDOW
    approvals.allow("@bob:example.org")
    assert list(approvals._open_until) == ["@bob:example.org"]
