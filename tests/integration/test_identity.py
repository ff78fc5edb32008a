"""A user logged in at the real issuer acts on the real Synapse through the bridge.

(Login then whoami, on every homeserver and strategy, is in test_stack_scenarios.py.)"""

from __future__ import annotations

from tests.integration.conftest import BridgeClient, Login, auth, new_localpart
from tests.support.stack import SERVER_NAME

WHOAMI = "/_matrix/client/v3/account/whoami"


async def test_client_supplied_identity_parameters_change_nothing(
    bridge: BridgeClient, login: Login
) -> None:
    alice, bob = new_localpart("alice"), new_localpart("bob")
    await login(bob, "BOBDEV")  # bob exists too, so impersonating him would "work"
    token = await login(alice, "DEVA")
    bridge_user = f"@{alice}:{SERVER_NAME}"
    for query in (
        {"user_id": f"@{bob}:{SERVER_NAME}"},
        {"device_id": "BOBDEV"},
        {"org.matrix.msc3202.device_id": "BOBDEV"},
        {"user_id": f"@{bob}:{SERVER_NAME}", "device_id": "BOBDEV", "ts": "1"},
    ):
        resp = await bridge.get(WHOAMI, params=query, headers=auth(token))
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {
            "user_id": bridge_user,
            "device_id": "DEVA",
            "is_guest": False,
        }, query


async def test_unstable_scopes_and_query_token(bridge: BridgeClient, login: Login) -> None:
    carol = new_localpart("carol")
    token = await login(carol, "CAROLDEV", unstable=True)
    resp = await bridge.get(WHOAMI, params={"access_token": token})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["device_id"] == "CAROLDEV"
