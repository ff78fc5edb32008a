"""A bound on the bridge's calls to the issuer that are in flight at once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from bridge.errors import IssuerUnavailable


class InflightLimit:
    """At most ``limit`` calls at once; one more fails at once with 503 instead of queueing.

    A queue would let a flood of made-up tokens hold every request behind it;
    failing fast keeps the bridge responsive and the issuer's load bounded,
    while cached tokens never reach this point.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        if self.inflight >= self.limit:
            raise IssuerUnavailable("The authentication service is busy", retry_after=1)
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1
