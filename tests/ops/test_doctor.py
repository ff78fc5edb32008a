"""doctor's introspection check reads the issuer's answers as the bridge does
(the real stack and broken set-ups: tests/integration/test_ops_stack.py)."""

from __future__ import annotations

import io

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from bridge.ops.doctor import CheckFailed, Doctor
from tests.fakes import FakeIssuer, Fault, bridge_config


async def introspection_check(issuer: FakeIssuer) -> str:
    config = bridge_config(issuer.url, "http://127.0.0.1:9")
    async with aiohttp.ClientSession() as session:
        async with session.get(issuer.url + ".well-known/openid-configuration") as resp:
            discovery = await resp.json()
        doctor = Doctor(config, session, io.StringIO())
        doctor.found.discovery = discovery
        return await doctor.introspection()


@pytest.mark.parametrize("error", ["invalid_token", "unsupported_token_type"])
async def test_a_token_refused_as_such_means_the_credentials_were_accepted(
    aiohttp_server: AiohttpServer, error: str
) -> None:
    # As the bridge itself reads it (bridge.issuer.introspection.TOKEN_ERRORS): inactive.
    issuer = await FakeIssuer.start(aiohttp_server)
    issuer.fault = Fault.json({"error": error}, status=400)
    assert error in await introspection_check(issuer)


@pytest.mark.parametrize(
    ("status", "error"), [(401, "invalid_client"), (400, "invalid_request"), (403, None)]
)
async def test_a_refusal_of_the_caller_is_a_credentials_failure(
    aiohttp_server: AiohttpServer, status: int, error: str | None
) -> None:
    issuer = await FakeIssuer.start(aiohttp_server)
    issuer.fault = Fault.json({"error": error} if error else {}, status=status)
    with pytest.raises(CheckFailed, match="refused the bridge's credentials"):
        await introspection_check(issuer)


async def test_an_inactive_answer_passes(aiohttp_server: AiohttpServer) -> None:
    issuer = await FakeIssuer.start(aiohttp_server)
    assert "inactive" in await introspection_check(issuer)
