"""The bridge's HTTP calls to its issuer (discovery, JWKS, introspection, token,
revocation), all made one way by :meth:`IssuerHTTP.call`:

- the call takes a slot of the in-flight bound (:class:`InflightLimit`: one
  more than it allows fails at once with 503), except discovery, which a
  flood of made-up tokens must not keep from refreshing the document;
- it is counted and timed under its kind (:meth:`Metrics.issuer_call`, which
  decides the outcome from how the call ends);
- it asks for JSON, authenticates as the endpoint wants (:func:`client_auth`),
  follows no redirect and ends within its timeout;
- no answer (no connection, a timeout, a body that cannot be read or decoded)
  is the caller's :class:`IssuerUnavailable` (:func:`unreachable`), chained to
  its cause; an answer the caller cannot use is :meth:`IssuerCall.refused`
  (503 with the issuer's own ``Retry-After`` when it is sane, :func:`retry_after`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import NamedTuple
from urllib.parse import quote

import aiohttp

from bridge.errors import IssuerUnavailable
from bridge.issuer.limit import InflightLimit
from bridge.ops.metrics import Metrics
from bridge.runtime.clock import Clock

log = logging.getLogger("bridge.issuer")

# How long a client is told to wait when the issuer says nothing usable.
DEFAULT_RETRY_AFTER = 5
# The longest wait of the issuer's own that is passed on to clients.
MAX_RETRY_AFTER = 300

# Makes the failure of a call that got no usable answer, from the error and the
# answer's HTTP status (0: none came).
Unreachable = Callable[[Exception, int], IssuerUnavailable]


class ClientAuth(NamedTuple):
    """The headers and form fields that authenticate the bridge to an issuer endpoint."""

    headers: Mapping[str, str]
    form: Mapping[str, str]


# A call without client authentication (discovery, JWKS): it only asks for JSON.
ANONYMOUS = ClientAuth({"Accept": "application/json"}, {})


def client_auth(auth: str, client_id: str | None, client_secret: str) -> ClientAuth:
    """How the bridge authenticates to the issuer's endpoints (introspection; the login
    client's token and revocation calls): ``client_secret_basic``,
    ``client_secret_post``, or MAS's shared secret (``mas_shared_secret``: a Bearer,
    and ``X-MAS-Supports-Device-Id`` for MAS to answer the device ID)."""
    headers = dict(ANONYMOUS.headers)
    if auth == "mas_shared_secret":
        headers["Authorization"] = f"Bearer {client_secret}"
        headers["X-MAS-Supports-Device-Id"] = "1"
        return ClientAuth(headers, {})
    assert client_id is not None  # checked by the config
    if auth == "client_secret_post":
        return ClientAuth(headers, {"client_id": client_id, "client_secret": client_secret})
    # RFC 6749 §2.3.1: both parts form-urlencoded before the Basic encoding.
    headers["Authorization"] = aiohttp.encode_basic_auth(
        quote(client_id, safe=""), quote(client_secret, safe="")
    )
    return ClientAuth(headers, {})


def retry_after(value: str | None, now: float) -> int:
    """The issuer's own ``Retry-After`` (RFC 9110 §10.2.3: delay-seconds, or an HTTP
    date, turned into seconds from ``now``, the wall clock) when it is sane: 1 s to
    5 min. Otherwise (none, garbage, 0, a date past or too far) 5 s."""
    if not value:
        return DEFAULT_RETRY_AFTER
    if value.isascii() and value.isdigit():
        seconds = int(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (ValueError, TypeError, OverflowError):
            return DEFAULT_RETRY_AFTER
        # An HTTP date is in GMT; a date without a zone (asctime) is read so too.
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = math.ceil(when.timestamp() - now)
    return seconds if 1 <= seconds <= MAX_RETRY_AFTER else DEFAULT_RETRY_AFTER


def unreachable(what: str, message: str) -> Unreachable:
    """A call's failure when it got no usable answer: logs ``{what} failed`` with the
    error's type, and answers ``message``."""

    def failure(error: Exception, _status: int) -> IssuerUnavailable:
        log.warning("%s failed: %s", what, type(error).__name__)
        return IssuerUnavailable(message)

    return failure


class IssuerCall(NamedTuple):
    """One call's answer, as :meth:`IssuerHTTP.call` gives it to its caller."""

    response: aiohttp.ClientResponse
    clock: Clock

    @property
    def status(self) -> int:
        return self.response.status

    def refused(self, what: str, message: str) -> IssuerUnavailable:
        """The failure for an answer the caller cannot use (logged as ``{what} answered
        HTTP {status}``): 503 with the issuer's ``Retry-After`` when sane."""
        log.error("%s answered HTTP %s", what, self.status)
        wait = retry_after(self.response.headers.get("Retry-After"), self.clock.time())
        return IssuerUnavailable(message, retry_after=wait)


@dataclass(frozen=True)
class IssuerHTTP:
    """The bridge's calls to its issuer, over one pooled ``session``, within ``limit``,
    counted in ``metrics``, each within ``timeout`` seconds (``issuer.timeout``) unless
    it says otherwise. ``clock``: what everything about the issuer reads the time from
    (HTTP dates in ``Retry-After`` here; discovery's age, the JWKS cooldowns)."""

    session: aiohttp.ClientSession
    limit: InflightLimit
    metrics: Metrics
    clock: Clock
    timeout: float

    @contextlib.asynccontextmanager
    async def call(
        self,
        kind: str,
        url: str,
        *,
        unreachable: Unreachable,
        form: Mapping[str, str] | None = None,
        auth: ClientAuth = ANONYMOUS,
        within: float | None = None,
        bounded: bool = True,
    ) -> AsyncIterator[IssuerCall]:
        """One call (``kind``: its metrics label, one of ``ISSUER_CALLS``): a POST of
        ``form`` (with ``auth``'s fields), or a GET without one. The block reads and
        judges the answer; whatever it raises is counted as the call's outcome, and
        a ValueError (a body that is not JSON, or too large) is ``unreachable``'s
        failure, as are a timeout and no connection. ``within``: its own timeout;
        ``bounded``: whether it takes a slot of the in-flight bound (all but discovery)."""
        data = None if form is None else {**form, **auth.form}
        slot = self.limit.slot() if bounded else contextlib.nullcontext()
        timeout = aiohttp.ClientTimeout(total=self.timeout if within is None else within)
        with slot, self.metrics.issuer_call(kind) as counted:
            try:
                async with self.session.request(
                    "GET" if data is None else "POST",
                    url,
                    data=data,
                    headers=auth.headers,
                    timeout=timeout,
                    allow_redirects=False,
                ) as resp:
                    counted.status = resp.status
                    yield IssuerCall(resp, self.clock)
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                raise unreachable(e, counted.status) from e
