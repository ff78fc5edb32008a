"""Request IDs: one per request, kept from the client when well-formed.

An incoming ``X-Request-ID`` is kept when it is 1 to 64 characters of
``[A-Za-z0-9._-]`` (what proxies such as nginx, Envoy and Heroku's router send,
and nothing that could forge a log line or a header); anything else is
replaced by one of the bridge's own: a random prefix per process and a
counter, 16 hexadecimal characters, unique without a system call per request.
The ID goes to the homeserver with the forwarded request, back to the client,
and into the access log.
"""

from __future__ import annotations

import itertools
import re
import secrets

from aiohttp import web

HEADER = "X-Request-ID"
_WELL_FORMED = re.compile(r"[A-Za-z0-9._-]{1,64}")

REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")


class RequestIDs:
    """Makes this process's request IDs."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count()

    def for_request(self, incoming: str | None) -> str:
        """``incoming`` if well-formed, else a new ID."""
        if incoming is not None and _WELL_FORMED.fullmatch(incoming):
            return incoming
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFF:08x}"
