"""CORS as the Matrix spec asks of every client-server endpoint (set on every answer by
``bridge.app``'s ``on_response_prepare`` hook)."""

from __future__ import annotations

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization",
}
