"""Two ``serve`` processes sharing one PostgreSQL store, with the login layer.

A login started on one instance is finished on the other (the one-time secrets
live in the store, and a ``loginToken`` is used once across both); a logout
through one reaches the other within a second (PostgreSQL ``LISTEN/NOTIFY``),
although the other holds the token in its cache. That holds for a device-less
token too, whose logout ends that one token.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from bridge.config import AppserviceConfig
from tests.integration.conftest import StartServe, auth, new_localpart
from tests.integration.login_stack import CLIENT_URL, V3
from tests.integration.test_device_login import new_postgres_store
from tests.support.issuer import TestIssuer, obtain_token
from tests.support.net import free_port
from tests.support.postgres import PostgresServer
from tests.support.sso import HttpBrowser, login_section, register_login_client
from tests.support.stack import served_bridge_document
from tests.support.synapse import SynapseServer

WHOAMI = f"{V3}/account/whoami"
# ``serve`` as ``python -m bridge`` runs it, but deaf to other instances' logouts: the
# control experiment that shows the test below detects a missing LISTEN.
DEAF = """\
import asyncio, sys
from bridge.store.postgres import PostgresStore

async def deaf(self, apply, *, interval):
    await asyncio.Event().wait()

PostgresStore.follow_logout_moments = deaf
from bridge.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


async def _whoami(http: aiohttp.ClientSession, base: str, token: str) -> tuple[int, Any]:
    async with http.get(base + WHOAMI, headers=auth(token)) as resp:
        return resp.status, await resp.json()


# Start instances "one" and "two" on one PostgreSQL store, behind one public name
# (``deaf``: "two" does not follow logouts); gives that name, and each one's own URL.
TwoInstances = Callable[..., Awaitable[tuple[str, str, str]]]


@pytest.fixture
def two_instances(
    start_serve: StartServe,
    postgres_server: PostgresServer,
    issuer: TestIssuer,
    synapse: SynapseServer,
    device_login_appservice: AppserviceConfig,
    http: aiohttp.ClientSession,
) -> TwoInstances:
    async def start(*, deaf: bool = False) -> tuple[str, str, str]:
        store = await new_postgres_store(postgres_server)
        ports = [free_port(), free_port()]
        one_base = f"http://127.0.0.1:{ports[0]}/"
        client = await register_login_client(http, issuer, one_base)
        served = []
        for name, port in zip(("one", "two"), ports, strict=True):
            document = served_bridge_document(
                issuer=issuer,
                homeserver_url=synapse.base_url,
                appservice=device_login_appservice,
                port=port,
                strategy="device_login",
                store=store,
                login=login_section(client),
            )
            document["public_baseurl"] = one_base  # one public name behind a load balancer
            code = DEAF if deaf and name == "two" else None
            served.append(start_serve(name, document, port, code=code))
        await asyncio.gather(*(asyncio.to_thread(s.wait_ready) for s in served))
        one, two = (s.base for s in served)
        return one_base, one, two

    return start


async def _refused_within_a_second(http: aiohttp.ClientSession, base: str, token: str) -> float:
    """Ask ``base`` until it refuses ``token`` (at most a second after now): how long."""
    logged_out = time.monotonic()
    while True:
        status, body = await _whoami(http, base, token)
        waited = time.monotonic() - logged_out
        if status == 401:
            break
        assert status == 200, body
        assert waited < 1.0, "the other instance still served the token after a second"
        await asyncio.sleep(0.02)
    assert body["errcode"] == "M_UNKNOWN_TOKEN"
    assert waited < 1.0
    return waited


async def _devices(http: aiohttp.ClientSession, synapse: SynapseServer, user_id: str) -> set[str]:
    """The user's devices, asked of the homeserver's admin API."""
    async with http.get(
        f"{synapse.base_url}/_synapse/admin/v2/users/{quote(user_id)}/devices",
        headers=auth(synapse.admin_token),
    ) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return {d["device_id"] for d in body["devices"]}


@pytest.mark.parametrize("deaf", [False, True], ids=["listening", "deaf"])
async def test_logout_on_one_instance_is_refused_by_the_other_within_a_second(
    two_instances: TwoInstances, deaf: bool, http: aiohttp.ClientSession, synapse: SynapseServer
) -> None:
    """Listening, the other instance refuses the token at once. Deaf to the
    announcement, it still never brings the deleted device back: its cache holds the
    token, but before it provisions the device again it asks the issuer, which has
    revoked it (the device-less test below is the control that needs LISTEN)."""
    one_base, one, two = await two_instances(deaf=deaf)

    person = HttpBrowser()
    try:
        login_token, _ = await person.sso_login(one_base, new_localpart("ivy"), CLIENT_URL)
    finally:
        await person.close()
    login = {"type": "m.login.token", "token": login_token}
    async with http.post(f"{two}{V3}/login", json=login) as resp:
        answer = await resp.json()
        assert resp.status == 200, answer
    async with http.post(f"{one}{V3}/login", json=login) as resp:
        assert resp.status == 403  # used up, on the other instance
    token = answer["access_token"]
    for base in (one, two):
        status, me = await _whoami(http, base, token)
        assert (status, me["user_id"]) == (200, answer["user_id"])  # now cached by both

    async with http.post(f"{one}{V3}/logout", headers=auth(token), json={}) as resp:
        assert resp.status == 200, await resp.text()
    waited = await _refused_within_a_second(http, two, token)
    print(f"the other instance refused the token {waited * 1000:.0f} ms after the logout")
    assert answer["device_id"] not in await _devices(http, synapse, answer["user_id"])


@pytest.mark.parametrize("deaf", [False, True], ids=["listening", "control-deaf"])
async def test_a_device_less_tokens_logout_reaches_the_other_instance_and_ends_it_alone(
    two_instances: TwoInstances, deaf: bool, issuer: TestIssuer, http: aiohttp.ClientSession
) -> None:
    """A token with the API scope alone has no device whose moment could end it: its
    logout names the token itself, and the user's other device-less token lives on.
    Deaf to the announcement, the other instance serves the ended token from its
    cache (the homeserver has no device to lose): the control showing that this test
    fails without LISTEN."""
    _, one, two = await two_instances(deaf=deaf)
    name = new_localpart("jay")
    ended, kept = [
        (await obtain_token(http, issuer.url, username=name, device_id=None)).access_token
        for _ in range(2)
    ]
    for base, token in itertools.product((one, two), (ended, kept)):
        status, me = await _whoami(http, base, token)
        assert status == 200, me  # now cached by both
        assert "device_id" not in me

    async with http.post(f"{one}{V3}/logout", headers=auth(ended), json={}) as resp:
        assert resp.status == 200, await resp.text()
    assert (await _whoami(http, one, ended))[0] == 401
    if deaf:
        await asyncio.sleep(1.0)
        assert (await _whoami(http, two, ended))[0] == 200
        return
    await _refused_within_a_second(http, two, ended)
    for base in (one, two):
        assert (await _whoami(http, base, kept))[0] == 200
