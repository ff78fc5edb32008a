"""The homeserver loses a device behind the bridge's back; the next request still works."""

from __future__ import annotations

from urllib.parse import quote

import aiohttp

from tests.integration.conftest import BridgeClient, Login, auth, new_localpart
from tests.support.stack import SERVER_NAME
from tests.support.synapse import SynapseServer

WHOAMI = "/_matrix/client/v3/account/whoami"


async def test_device_deleted_on_the_homeserver_is_recreated_at_once(
    bridge: BridgeClient, login: Login, synapse: SynapseServer, http: aiohttp.ClientSession
) -> None:
    alice = new_localpart("alice")
    token = await login(alice, "DEVA")
    resp = await bridge.get(WHOAMI, headers=auth(token))
    assert resp.status == 200

    # An admin deletes the device directly on the homeserver.
    user = quote(f"@{alice}:{SERVER_NAME}")
    async with http.delete(
        f"{synapse.base_url}/_synapse/admin/v2/users/{user}/devices/DEVA",
        headers=auth(synapse.admin_token),
    ) as deleted:
        assert deleted.status == 200

    # The bridge still believes it exists (its memory lasts 600 s), and heals at once.
    resp = await bridge.get(WHOAMI, headers=auth(token))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["device_id"] == "DEVA"
    async with http.get(
        f"{synapse.base_url}/_synapse/admin/v2/users/{user}/devices",
        headers=auth(synapse.admin_token),
    ) as devices:
        assert [d["device_id"] for d in (await devices.json())["devices"]] == ["DEVA"]
