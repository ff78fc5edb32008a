"""One log line per request: method, path without the query (it may hold a token), status.

Cheap by design, as it runs for every request: the line is formatted here
(as the log format of ``bridge.__main__`` would format it) and lines are
written in batches, at most half a second late, in one write each, instead
of a log record and a flushed write per request (which cost more than
the rest of a forwarded request's own work). Written on exit too.

aiohttp makes an access logger per connection: the batch is one per process,
shared by all of them.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import sys
import time
from typing import TextIO

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

_FLUSH_AFTER = 0.5  # seconds
_FLUSH_AT = 1024  # lines


class _Batch:
    """The process's access lines not written yet."""

    def __init__(self) -> None:
        self.stream: TextIO | None = None  # None: sys.stderr at the time of writing
        self._lines: list[str] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def stamp(self, now: float) -> str:
        """``now`` as the log format's ``asctime`` (the seconds' text cached)."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int((now - second) * 1000):03d}"

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

    # Set by the command line before serving: whether lines name their process
    # (with several workers).
    with_pid: bool = False

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        pid = f" [{os.getpid()}]" if self.with_pid else ""
        self._prefix = f" INFO{pid} {logger.name} "

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_: float) -> None:
        BATCH.add(
            f"{BATCH.stamp(time.time())}{self._prefix}{request.remote} "
            f"{request.method} {request.path} {response.status} {response.body_length} "
            f"{time_ * 1000:.1f}ms\n"
        )
