"""The token endpoint's 200 answers, as the login layer reads them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.errors import IssuerUnavailable
from bridge.issuer.oauth import _token_response


def answer(**changes: Any) -> dict[str, Any]:
    return {"access_token": "at", "token_type": "Bearer", **changes}


@pytest.mark.parametrize(
    ("body", "expires_in"),
    [
        ('{"expires_in": 300}', 300),
        ('{"expires_in": 299.9}', 299),
        ('{"expires_in": Infinity}', None),  # Python's JSON reads these
        ('{"expires_in": -Infinity}', None),
        ('{"expires_in": NaN}', None),
        ('{"expires_in": true}', None),
        ('{"expires_in": "300"}', None),
        ("{}", None),
    ],
)
def test_expires_in_is_a_finite_number_or_unknown(body: str, expires_in: int | None) -> None:
    assert _token_response(answer(**json.loads(body))).expires_in == expires_in


@pytest.mark.parametrize(
    "changes",
    [{"access_token": ""}, {"access_token": 7}, {"token_type": "DPoP"}, {"token_type": None}],
)
def test_no_usable_bearer_token_is_the_issuers_failure(changes: dict[str, Any]) -> None:
    with pytest.raises(IssuerUnavailable):
        _token_response(answer(**changes))
