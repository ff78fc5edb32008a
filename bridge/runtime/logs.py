"""Log set-up: level and format (plain text or JSON lines), changeable by a reload.

Nothing the bridge logs holds a token, a secret or a request body: messages
name what happened and the exception's type, never its arguments' values.
The access log (:mod:`bridge.runtime.accesslog`) writes its own lines, in the same
format.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from bridge.config import LoggingConfig
from bridge.runtime.accesslog import AccessLogger

LEVEL_ENV = "BRIDGE_LOG_LEVEL"
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


class JSONFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, pid, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
            + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _ENCODE(line)


def level_of(config: LoggingConfig) -> str:
    """The level in force: ``BRIDGE_LOG_LEVEL`` when set, else the config's."""
    return os.environ.get(LEVEL_ENV, "").upper() or config.level


def configure(config: LoggingConfig, *, with_pid: bool = False) -> None:
    """Set (or change, on reload) the root logger's level and format, and the access
    log's. With several processes, each line says which one wrote it."""
    pid = " [%(process)d]" if with_pid else ""
    formatter: logging.Formatter
    if config.format == "json":
        formatter = JSONFormatter()
    else:
        formatter = logging.Formatter(f"%(asctime)s %(levelname)s{pid} %(name)s %(message)s")
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for handler in root.handlers:
        handler.setFormatter(formatter)
    root.setLevel(level_of(config))
    AccessLogger.configure(
        with_pid=with_pid, json_lines=config.format == "json", user_ids=config.access_log_user_id
    )
