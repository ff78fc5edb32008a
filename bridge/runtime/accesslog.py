"""One log line per request: its request ID, route group, method, path without the query
(it may hold a token), status, size and duration; the user's Matrix ID only where
``logging.access_log_user_id`` says so. Plain text, or a JSON object per line
(``logging.format: json``).

Cheap by design, as it runs for every request: the line is formatted here
(as the log format of ``bridge.cli.main`` would format it) and lines are
written in batches, at most half a second late, in one write each, instead
of a log record and a flushed write per request (which cost more than
the rest of a forwarded request's own work). Written on exit too.

aiohttp makes an access logger per connection: the batch is one per process,
shared by all of them.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import sys
import time
from typing import TextIO

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from bridge.http.request_id import REQUEST_ID
from bridge.state import IDENTITY, ROUTE_GROUP

_FLUSH_AFTER = 0.5  # seconds
_FLUSH_AT = 1024  # lines
# Built once: the JSON lines' encoder (no indentation, no circularity check).
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode


class _Batch:
    """The process's access lines not written yet."""

    def __init__(self) -> None:
        self.stream: TextIO | None = None  # None: sys.stderr at the time of writing
        self._lines: list[str] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""
        self._iso = ""

    def stamp(self, now: float) -> str:
        """``now`` as the log format's ``asctime`` (the seconds' text cached)."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._iso = self._stamp.replace(" ", "T")
        return f"{self._stamp},{int((now - second) * 1000):03d}"

    def iso_stamp(self, now: float) -> str:
        """``now`` as ISO 8601 local time with milliseconds (JSON lines)."""
        self.stamp(now)
        return f"{self._iso}.{int((now - int(now)) * 1000):03d}"

    def add(self, line: str) -> None:
        self._lines.append(line)
        if len(self._lines) >= _FLUSH_AT:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(_FLUSH_AFTER, self.flush)

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        stream = self.stream or sys.stderr
        try:
            stream.write("".join(lines))
            stream.flush()
        except (OSError, ValueError):
            pass  # the log is gone (closed at exit): nothing to tell it with


BATCH = _Batch()
atexit.register(BATCH.flush)


class AccessLogger(AbstractAccessLogger):
    """Never logs the query string, headers or bodies: they may carry tokens."""

    # Set by bridge.runtime.logs before serving and on reload: whether lines name their
    # process (with several workers), are JSON, and name the user.
    with_pid: bool = False
    json_lines: bool = False
    user_ids: bool = False

    @classmethod
    def configure(cls, *, with_pid: bool, json_lines: bool, user_ids: bool) -> None:
        cls.with_pid, cls.json_lines, cls.user_ids = with_pid, json_lines, user_ids

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        self._pid = os.getpid()
        # The plain line's fixed part, made once per connection.
        self._prefix = f" INFO{f' [{self._pid}]' if self.with_pid else ''} {logger.name} "

    @property
    def enabled(self) -> bool:
        # aiohttp asks once per connection: the level is checked on each line instead,
        # so that a reload's new level applies to open connections too.
        return True

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        request_id = request.get(REQUEST_ID, "-")
        route = request.get(ROUTE_GROUP, "other")
        user = None
        if self.user_ids:
            identity = request.get(IDENTITY)
            user = identity.user_id if identity is not None else None
        now = time.time()
        if self.json_lines:
            line = {
                "time": BATCH.iso_stamp(now),
                "level": "INFO",
                "logger": self.logger.name,
                "pid": self._pid,
                "request_id": request_id,
                "route": route,
                "remote": request.remote,
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "bytes": response.body_length,
                "duration_ms": round(time_ * 1000, 1),
            }
            if user is not None:
                line["user_id"] = user
            BATCH.add(_ENCODE(line) + "\n")
            return
        BATCH.add(
            f"{BATCH.stamp(now)}{self._prefix}{request.remote} "
            f"{request.method} {request.path} {response.status} {response.body_length} "
            f"{time_ * 1000:.1f}ms {route} {request_id}{' ' + user if user else ''}\n"
        )
