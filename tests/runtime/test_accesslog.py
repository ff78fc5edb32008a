"""The access log: one line per request, in batches shared by every connection."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
from collections.abc import Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from bridge.auth.identity import DeviceID, Identity, UserID
from bridge.http.request_id import REQUEST_ID
from bridge.runtime import accesslog
from bridge.runtime.accesslog import AccessLogger
from bridge.state import IDENTITY, ROUTE_GROUP

LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO bridge\.access \S+ GET "
    r"(?P<path>/_matrix/client/v3/\w+) 200 \d+ 1\.5ms (?P<route>\w+) (?P<request_id>\S+)$"
)


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    written = io.StringIO()
    logger = logging.getLogger("bridge.access")
    level = logger.level
    logger.setLevel(logging.INFO)
    accesslog.BATCH.flush()
    accesslog.BATCH.stream = written
    yield written
    accesslog.BATCH.flush()
    accesslog.BATCH.stream = None
    logger.setLevel(level)
    AccessLogger.configure(with_pid=False, json_lines=False, user_ids=False)


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


def _request(path: str = "/_matrix/client/v3/sync?access_token=secret") -> web.Request:
    request = make_mocked_request("GET", path, headers={"Authorization": "Bearer secret"})
    request[REQUEST_ID] = "req-1"
    request[ROUTE_GROUP] = "sync"
    request[IDENTITY] = Identity(UserID("@alice:example.org"), DeviceID("DEVA"), "alice")
    return request


@pytest.mark.parametrize("user_ids", [False, True])
async def test_json_lines_name_the_request_and_the_user_only_when_allowed(
    stream: io.StringIO, user_ids: bool
) -> None:
    AccessLogger.configure(with_pid=False, json_lines=True, user_ids=user_ids)
    AccessLogger(logging.getLogger("bridge.access"), "").log(
        _request(), web.Response(status=200, body=b"{}"), 0.0125
    )
    accesslog.BATCH.flush()
    [line] = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record.pop("time")
    assert record == {
        "level": "INFO",
        "logger": "bridge.access",
        "pid": os.getpid(),
        "request_id": "req-1",
        "route": "sync",
        "remote": record["remote"],
        "method": "GET",
        "path": "/_matrix/client/v3/sync",
        "status": 200,
        "bytes": 0,  # not sent: a mocked request
        "duration_ms": 12.5,
        **({"user_id": "@alice:example.org"} if user_ids else {}),
    }
    assert "secret" not in line
    assert ("alice" in line) is user_ids


async def test_plain_lines_name_the_user_only_when_allowed(stream: io.StringIO) -> None:
    logger = AccessLogger(logging.getLogger("bridge.access"), "")
    logger.log(_request(), web.Response(), 0.001)
    AccessLogger.configure(with_pid=False, json_lines=False, user_ids=True)
    logger.log(_request(), web.Response(), 0.001)
    accesslog.BATCH.flush()
    without, with_user = stream.getvalue().splitlines()
    assert without.endswith(" 1.0ms sync req-1")
    assert with_user.endswith(" 1.0ms sync req-1 @alice:example.org")


async def test_nothing_is_written_below_the_level(stream: io.StringIO) -> None:
    logging.getLogger("bridge.access").setLevel(logging.WARNING)
    AccessLogger(logging.getLogger("bridge.access"), "").log(_request(), web.Response(), 0.001)
    accesslog.BATCH.flush()
    assert stream.getvalue() == ""
