"""IssuerHTTP: the issuer's Retry-After as seconds or an HTTP date, and the in-flight bound."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import format_datetime

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient, AiohttpServer

from bridge.app import create_app
from bridge.errors import IssuerUnavailable
from bridge.issuer.http import IssuerHTTP, retry_after
from bridge.issuer.limit import InflightLimit
from bridge.issuer.metadata import IssuerMetadata
from bridge.ops.metrics import Metrics
from tests.fakes import FakeHomeserver, FakeIssuer, Fault, active_claims, bearer, bridge_config
from tests.support.clock import FakeClock

NOW = 1_800_000_000.0  # Fri, 15 Jan 2027 08:00:00 GMT


def http_date(offset: float) -> str:
    """RFC 9110 §5.6.7's IMF-fixdate, ``offset`` seconds from NOW."""
    return format_datetime(datetime.fromtimestamp(NOW + offset, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("7", 7, id="seconds"),
        pytest.param("1", 1, id="one-second"),
        pytest.param("300", 300, id="five-minutes"),
        pytest.param("301", 5, id="too-long"),
        pytest.param("0", 5, id="zero"),
        pytest.param("-3", 5, id="negative"),
        pytest.param("1.5", 5, id="fraction"),
        pytest.param("²", 5, id="not-an-ascii-digit"),
        pytest.param(None, 5, id="absent"),
        pytest.param("", 5, id="empty"),
        pytest.param("soon", 5, id="garbage"),
        pytest.param(http_date(120), 120, id="http-date"),
        pytest.param(http_date(1), 1, id="http-date-in-one-second"),
        pytest.param("Friday, 15-Jan-27 08:02:00 GMT", 120, id="rfc-850-date"),
        pytest.param("Fri Jan 15 08:02:00 2027", 120, id="asctime-date"),
        pytest.param(http_date(-60), 5, id="http-date-past"),
        pytest.param(http_date(0), 5, id="http-date-now"),
        pytest.param(http_date(3600), 5, id="http-date-too-far"),
        pytest.param("Sun, 31 Feb 2027 08:02:00 GMT", 5, id="impossible-date"),
        pytest.param("Fri, 15 Jan 99999 08:02:00 GMT", 5, id="year-out-of-range"),
    ],
)
def test_retry_after_is_seconds_or_an_http_date_and_passed_on_only_when_sane(
    value: str | None, seconds: int
) -> None:
    assert http_date(120) == "Fri, 15 Jan 2027 08:02:00 GMT"  # the date the other forms give
    assert retry_after(value, NOW) == seconds


def test_an_http_date_is_rounded_up_to_whole_seconds() -> None:
    assert retry_after(http_date(0), NOW - 0.4) == 1
    assert retry_after(http_date(10), NOW + 0.6) == 10


async def test_an_http_date_from_the_issuer_reaches_the_client_as_seconds(
    aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, homeserver: FakeHomeserver
) -> None:
    issuer = await FakeIssuer.start(aiohttp_server)
    issuer.tokens["fresh"] = active_claims()
    clock = FakeClock(NOW)
    bridge = await aiohttp_client(
        create_app(bridge_config(issuer.url, homeserver.url), clock=clock)
    )
    issuer.fault = Fault.json({}, status=503, headers={"Retry-After": http_date(42)})
    resp = await bridge.get("/_matrix/client/v3/account/whoami", headers=bearer("fresh"))
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "42"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_discovery_takes_no_slot_of_the_inflight_bound(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    """A flood that fills the bound must not keep the discovery document from refreshing."""
    issuer = await FakeIssuer.start(aiohttp_server)
    config = bridge_config(issuer.url, "http://127.0.0.1:9").issuer
    limit = InflightLimit(1)
    http = IssuerHTTP(session, limit, Metrics(), FakeClock(), config.timeout)
    metadata = IssuerMetadata(http, config)
    with limit.slot():
        await metadata.fetch()
        with pytest.raises(IssuerUnavailable, match="busy"):
            async with http.call("jwks", issuer.url, unreachable=_never):
                pass
    assert metadata.current is not None


def _never(error: Exception, _status: int) -> IssuerUnavailable:
    raise AssertionError(f"the call should not have been made: {error!r}")
