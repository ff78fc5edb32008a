"""Fixtures shared by the unit tests: the fault-injecting fake homeserver."""

from __future__ import annotations

import pytest
from pytest_aiohttp import AiohttpServer

from tests.fakes import FakeHomeserver


@pytest.fixture
async def homeserver(aiohttp_server: AiohttpServer) -> FakeHomeserver:
    """A fake homeserver that records every request and answers as told."""
    return await FakeHomeserver.start(aiohttp_server)
