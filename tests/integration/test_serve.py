"""The ``serve`` command as systemd runs it: logs one line per request, never a token."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from bridge.config import AppserviceConfig
from tests.integration.conftest import Login, Serve, auth, new_localpart
from tests.support.issuer import TestIssuer
from tests.support.net import free_port
from tests.support.serve import Bridge
from tests.support.stack import served_bridge_document
from tests.support.synapse import SynapseServer


@pytest.fixture
def served(
    serve: Serve, issuer: TestIssuer, synapse: SynapseServer, appservice: AppserviceConfig
) -> Bridge:
    """``matrix-oidc-bridge serve`` in its own process, logging at DEBUG."""
    document = served_bridge_document(
        issuer=issuer, homeserver_url=synapse.base_url, appservice=appservice, port=free_port()
    )
    return serve(document, {"BRIDGE_LOG_LEVEL": "DEBUG"})


async def test_serve_logs_requests_without_tokens(
    served: Bridge,
    issuer: TestIssuer,
    appservice: AppserviceConfig,
    login: Login,
    http: aiohttp.ClientSession,
) -> None:
    token = await login(new_localpart("alice"), "DEVA")
    whoami = served.base + "/_matrix/client/v3/account/whoami"
    async with http.get(whoami, headers=auth(token)) as resp:
        assert resp.status == 200
    async with http.get(whoami, params={"access_token": token}) as resp:
        assert resp.status == 200
    async with http.get(whoami, headers=auth("garbage-" + token[::-1])) as resp:
        assert resp.status == 401
    # A graceful stop on SIGTERM, with exit code 0.
    served.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(served.process.wait, 15) == 0

    logged = served.log_path.read_text(encoding="utf-8")
    assert logged.count("GET /_matrix/client/v3/account/whoami 200") == 2
    assert "GET /_matrix/client/v3/account/whoami 401" in logged
    for secret in (
        token,
        token[::-1],
        appservice.as_token,
        appservice.hs_token,
        issuer.bridge_client_secret,
    ):
        assert secret not in logged
