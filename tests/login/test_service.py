"""The login layer apart from HTTP: what ``POST /login`` answers."""

from __future__ import annotations

from bridge.login.service import Issued


def test_the_answer_counts_the_tokens_lifetime_from_the_moment_it_is_given() -> None:
    issued = Issued("@alice:example.org", "DEVA", "access", "refresh", expires_at=1000.0)
    answer = issued.matrix_answer({}, 990.5)
    assert answer["expires_in_ms"] == 9500
    assert answer["refresh_token"] == "refresh"
    assert issued.matrix_answer({}, 1001.0)["expires_in_ms"] == 0  # never negative
    assert "expires_in_ms" not in Issued("@a:x", "D", "t", None, None).matrix_answer({}, 0.0)
