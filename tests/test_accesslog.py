"""The access log: one line per request, in batches shared by every connection."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from bridge import accesslog
from bridge.accesslog import AccessLogger

LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO bridge\.access \S+ GET "
    r"(?P<path>/_matrix/client/v3/\w+) 200 \d+ 1\.5ms (?P<route>\w+) (?P<request_id>\S+)$"
)


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    written = io.StringIO()
    accesslog.BATCH.flush()
    accesslog.BATCH.stream = written
    yield written
    accesslog.BATCH.flush()
    accesslog.BATCH.stream = None


async def test_connections_share_one_batch_written_half_a_second_late(
    stream: io.StringIO,
) -> None:
    logger = logging.getLogger("bridge.access")
    # aiohttp makes one access logger per connection.
    first, second = AccessLogger(logger, ""), AccessLogger(logger, "")
    for connection, name in ((first, "sync"), (second, "whoami"), (first, "versions")):
        request = make_mocked_request("GET", f"/_matrix/client/v3/{name}?access_token=secret")
        connection.log(request, web.Response(body=b"{}"), 0.0015)
    assert stream.getvalue() == ""  # not yet: batched

    await asyncio.sleep(accesslog._FLUSH_AFTER + 0.2)
    matches = [LINE.match(line) for line in stream.getvalue().splitlines()]
    # One batch for the process, in the order the requests ended.
    assert [m["path"] if m else None for m in matches] == [
        "/_matrix/client/v3/sync",
        "/_matrix/client/v3/whoami",
        "/_matrix/client/v3/versions",
    ]
    assert "secret" not in stream.getvalue()  # never the query string


async def test_a_full_batch_is_written_at_once(stream: io.StringIO) -> None:
    logger = AccessLogger(logging.getLogger("bridge.access"), "")
    request = make_mocked_request("GET", "/_matrix/client/v3/sync")
    for _ in range(accesslog._FLUSH_AT):
        logger.log(request, web.Response(), 0.0015)
    assert len(stream.getvalue().splitlines()) == accesslog._FLUSH_AT
