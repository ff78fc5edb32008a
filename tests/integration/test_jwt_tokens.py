"""JWT access tokens from the real issuer (oidc-provider, RFC 9068), RS256 and ES256.

The issuer runs with ``resourceIndicators`` and ``accessTokenFormat: 'jwt'``; the
bridge with ``issuer.validation: jwt``. A user logs in (authorization code + PKCE),
then whoami, a room, a message and /sync go through the bridge to Synapse, and the
issuer counts what the bridge asked of it: no introspection at all, the JWKS once
at start. Then the issuer rotates its signing key while the bridge runs: the first
token of the new key costs one JWKS refetch, tokens of the old key keep working
while the key is published, and are refused once it is not.

Also here: tokens without a device scope, through both identity strategies.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web

from bridge.app import create_app
from bridge.config import AppserviceConfig, Strategy
from tests.integration.conftest import BridgeClient, MakeBridge, auth, new_localpart
from tests.support.issuer import TestIssuer, obtain_token, start_issuer
from tests.support.stack import SERVER_NAME, bridge_config
from tests.support.synapse import SynapseServer

V3 = "/_matrix/client/v3"
WHOAMI = f"{V3}/account/whoami"
# What oidc-provider puts in ``aud`` (its one resource server, tests/oidc-provider).
AUDIENCE = "urn:matrix:client"
COOLDOWN = 1.0
JWT_SETTINGS = {
    "validation": "jwt",
    "audiences": [AUDIENCE],
    "jwt": {"jwks_refetch_cooldown": COOLDOWN},
}


@pytest.fixture(params=["RS256", "ES256"])
def jwt_issuer(request: pytest.FixtureRequest) -> Iterator[TestIssuer]:
    """An issuer of JWT access tokens signed with the parameter's algorithm."""
    running = start_issuer(access_token_format="jwt", access_token_alg=request.param)
    yield running
    running.stop()


def header(token: str) -> dict[str, Any]:
    segment = token.split(".")[0]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * 4))
    return decoded


async def call(bridge: BridgeClient, method: str, path: str, token: str, **kw: Any) -> Any:
    resp = await bridge.request(method, path, headers=auth(token), **kw)
    assert resp.status == 200, f"{method} {path}: {resp.status} {await resp.text()}"
    return await resp.json()


async def token_for(http: aiohttp.ClientSession, issuer: TestIssuer, name: str, device: str) -> str:
    tokens = await obtain_token(http, issuer.url, username=name, device_id=device)
    return tokens.access_token


async def test_login_room_message_sync_then_key_rotation(
    make_bridge: MakeBridge, http: aiohttp.ClientSession, jwt_issuer: TestIssuer
) -> None:
    issuer = jwt_issuer
    bridge = await make_bridge(issuer, issuer_settings=JWT_SETTINGS)
    assert issuer.jwks_count() == 1  # fetched at start
    issuer.reset_counters()

    alice, bob = new_localpart("alice"), new_localpart("bob")
    alice_token = await token_for(http, issuer, alice, "ALICEDEV")
    bob_token = await token_for(http, issuer, bob, "BOBDEV")
    first_kid = header(alice_token)["kid"]
    assert header(alice_token)["typ"] == "at+jwt"
    assert header(alice_token)["alg"] == issuer.access_token_alg

    whoami = await call(bridge, "GET", WHOAMI, alice_token)
    assert whoami["user_id"] == f"@{alice}:{SERVER_NAME}"
    assert whoami["device_id"] == "ALICEDEV"
    room = await call(bridge, "POST", f"{V3}/createRoom", alice_token, json={})
    room_id = room["room_id"]
    bob_id = f"@{bob}:{SERVER_NAME}"
    path = f"{V3}/rooms/{quote(room_id)}"
    await call(bridge, "POST", f"{path}/invite", alice_token, json={"user_id": bob_id})
    await call(bridge, "POST", f"{path}/join", bob_token, json={})
    sent = await call(
        bridge,
        "PUT",
        f"{path}/send/m.room.message/txn-{secrets.token_hex(4)}",
        alice_token,
        json={"msgtype": "m.text", "body": "signed, sealed, delivered"},
    )
    synced = await call(bridge, "GET", f"{V3}/sync", bob_token, params={"timeout": "0"})
    events = synced["rooms"]["join"][room_id]["timeline"]["events"]
    assert sent["event_id"] in [e["event_id"] for e in events]

    counters = issuer.counters()
    assert counters["introspection"] == 0
    assert counters["jwks"] == 0  # every key was held from the start

    # Old-key tokens not used yet, to be checked only after the rotation.
    carol_token = await token_for(http, issuer, new_localpart("carol"), "CAROLDEV")
    hank_token = await token_for(http, issuer, new_localpart("hank"), "HANKDEV")
    assert header(carol_token)["kid"] == header(hank_token)["kid"] == first_kid

    # Rotate while the bridge runs.
    new_kid = issuer.rotate_keys()
    dave_token = await token_for(http, issuer, new_localpart("dave"), "DAVEDEV")
    assert header(dave_token)["kid"] == new_kid
    results = await asyncio.gather(
        *(bridge.get(WHOAMI, headers=auth(dave_token)) for _ in range(20))
    )
    assert [r.status for r in results] == [200] * 20
    assert issuer.jwks_count() == 1  # one refetch for the new key, shared by all 20
    # Tokens of the old key, still published: cached (alice) or never seen (carol).
    assert (await call(bridge, "GET", WHOAMI, alice_token))["device_id"] == "ALICEDEV"
    assert (await call(bridge, "GET", WHOAMI, carol_token))["device_id"] == "CAROLDEV"
    assert issuer.jwks_count() == 1

    # The old key is unpublished, and a third one comes: its first token makes the
    # bridge refetch (after the cooldown), and the JWKS it gets lacks the old key.
    erin_token = await token_for(http, issuer, new_localpart("erin"), "ERINDEV")
    issuer.retire_keys()
    issuer.rotate_keys()
    frank_token = await token_for(http, issuer, new_localpart("frank"), "FRANKDEV")
    await asyncio.sleep(COOLDOWN + 0.2)
    assert (await bridge.get(WHOAMI, headers=auth(frank_token))).status == 200
    assert issuer.jwks_count() == 2
    assert (await bridge.get(WHOAMI, headers=auth(erin_token))).status == 200  # still published
    # An old-key token the bridge never cached: during the cooldown 503 (it might be
    # a brand-new key), then one more refetch, and 401 for good.
    resp = await bridge.get(WHOAMI, headers=auth(hank_token))
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) >= 1
    await asyncio.sleep(COOLDOWN + 0.2)
    resp = await bridge.get(WHOAMI, headers=auth(hank_token))
    assert resp.status == 401
    assert (await resp.json())["soft_logout"] is False
    assert issuer.jwks_count() == 3
    assert issuer.counters()["introspection"] == 0


async def test_a_token_of_a_key_no_longer_published_is_refused(
    make_bridge: MakeBridge, http: aiohttp.ClientSession, jwt_issuer: TestIssuer
) -> None:
    issuer = jwt_issuer
    old_token = await token_for(http, issuer, new_localpart("alice"), "ALICEDEV")
    issuer.rotate_keys()
    issuer.retire_keys()  # the old key is gone before the bridge ever starts
    bridge = await make_bridge(issuer, issuer_settings=JWT_SETTINGS)
    resp = await bridge.get(WHOAMI, headers=auth(old_token))
    assert resp.status == 401
    body = await resp.json()
    assert body["errcode"] == "M_UNKNOWN_TOKEN"
    assert body["soft_logout"] is False
    new_token = await token_for(http, issuer, new_localpart("bob"), "BOBDEV")
    assert (await bridge.get(WHOAMI, headers=auth(new_token))).status == 200
    assert issuer.counters()["introspection"] == 0


async def test_introspection_mode_cannot_read_jwt_access_tokens(
    make_bridge: MakeBridge, http: aiohttp.ClientSession, jwt_issuer: TestIssuer
) -> None:
    """oidc-provider does not store JWT access tokens: introspection calls them inactive
    (so a bridge must be told validation: jwt or jwt_then_introspection)."""
    token = await token_for(http, jwt_issuer, new_localpart("alice"), "ALICEDEV")
    introspecting = await make_bridge(jwt_issuer)
    assert (await introspecting.get(WHOAMI, headers=auth(token))).status == 401
    both = await make_bridge(
        jwt_issuer, issuer_settings={**JWT_SETTINGS, "validation": "jwt_then_introspection"}
    )
    assert (await both.get(WHOAMI, headers=auth(token))).status == 200
    assert jwt_issuer.counters()["introspection"] == 1  # the introspecting bridge's only


# ---------------------------------------------------------------------------------------
# Device-less tokens


@pytest.fixture
def own_issuer() -> Iterator[TestIssuer]:
    running = start_issuer()
    yield running
    running.stop()


@pytest.mark.parametrize("strategy", ["masquerade", "device_login"])
async def test_a_token_without_a_device_scope_acts_as_the_user_without_a_device(
    aiohttp_client: Callable[[web.Application], Any],
    http: aiohttp.ClientSession,
    synapse: SynapseServer,
    appservice: AppserviceConfig,
    device_login_appservice: AppserviceConfig,
    own_issuer: TestIssuer,
    tmp_path: Path,
    strategy: Strategy,
) -> None:
    config = bridge_config(
        issuer=own_issuer,
        homeserver_url=synapse.base_url,
        appservice=appservice if strategy == "masquerade" else device_login_appservice,
        strategy=strategy,
        store_path=tmp_path / "bridge.db" if strategy == "device_login" else None,
    )
    bridge: BridgeClient = await aiohttp_client(create_app(config))
    name = new_localpart("nodevice")
    tokens = await obtain_token(http, own_issuer.url, username=name, device_id=None)
    assert "device" not in tokens.scope
    whoami = await call(bridge, "GET", WHOAMI, tokens.access_token)
    assert whoami["user_id"] == f"@{name}:{SERVER_NAME}"
    assert whoami.get("device_id") is None
    room = await call(bridge, "POST", f"{V3}/createRoom", tokens.access_token, json={})
    assert room["room_id"].startswith("!")
    # A device-scoped token of the same user still has its device.
    scoped = await obtain_token(http, own_issuer.url, username=name, device_id="WITHDEVICE")
    assert (await call(bridge, "GET", WHOAMI, scoped.access_token))["device_id"] == "WITHDEVICE"
