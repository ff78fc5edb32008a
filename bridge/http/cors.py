"""CORS as the Matrix spec asks of every client-server endpoint (set on every answer by
``bridge.app``'s ``on_response_prepare`` hook)."""

from __future__ import annotations

from multidict import CIMultiDict

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization",
}


def add_cors_headers(headers: CIMultiDict[str]) -> None:
    """Every answer, bridge-made or forwarded, gets them (where the homeserver did
    not send its own), before it is prepared: by the ``front`` middleware, or by
    the forwarder when it streams. Not an ``on_response_prepare`` signal, whose
    dispatch costs more than the headers."""
    for name, value in CORS_HEADERS.items():
        headers.setdefault(name, value)
