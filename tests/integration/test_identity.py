"""A user logged in at the real issuer acts on the real Synapse through the bridge."""

from __future__ import annotations

from tests.integration.conftest import BridgeClient, Login, auth, new_localpart
from tests.support.stack import SERVER_NAME

WHOAMI = "/_matrix/client/v3/account/whoami"


async def test_whoami_is_the_token_user_and_device(
    bridge: BridgeClient, login: Login, synapse_admin
) -> None:
    alice = new_localpart("alice")
    token = await login(alice, "DEVA")
    resp = await bridge.get(WHOAMI, headers=auth(token))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["user_id"] == f"@{alice}:{SERVER_NAME}"
    assert body["device_id"] == "DEVA"

    user = await synapse_admin(f"/_synapse/admin/v2/users/@{alice}:{SERVER_NAME}")
    assert user["_status"] == 200
    assert user["deactivated"] is False
    devices = await synapse_admin(f"/_synapse/admin/v2/users/@{alice}:{SERVER_NAME}/devices")
    assert [d["device_id"] for d in devices["devices"]] == ["DEVA"]
