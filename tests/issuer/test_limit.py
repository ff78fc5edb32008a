"""InflightLimit: a bound on concurrent issuer calls, failing fast beyond it."""

from __future__ import annotations

import pytest

from bridge.errors import IssuerUnavailable
from bridge.issuer.limit import InflightLimit


def test_slots_up_to_the_limit_then_503_at_once() -> None:
    limit = InflightLimit(2)
    with limit.slot(), limit.slot():
        assert limit.inflight == 2
        with pytest.raises(IssuerUnavailable) as refused, limit.slot():
            pass
        assert refused.value.status == 503
        assert refused.value.headers["Retry-After"] == "1"
        assert limit.inflight == 2
    assert limit.inflight == 0


def test_a_failed_call_gives_its_slot_back() -> None:
    limit = InflightLimit(1)
    with pytest.raises(RuntimeError), limit.slot():
        raise RuntimeError("issuer call failed")
    with limit.slot():
        assert limit.inflight == 1
