"""Cross-signing: first set-up passes, a reset asks for the m.oauth stage (real Synapse).

Synapse lets appservices replace cross-signing keys without user-interactive
auth, so without the bridge's check any access token could replace them.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from tests.integration.conftest import BridgeClient, Login, auth, new_localpart
from tests.support.stack import SERVER_NAME

UPLOAD = "/_matrix/client/v3/keys/device_signing/upload"
QUERY = "/_matrix/client/v3/keys/query"


def master_key(user_id: str) -> dict[str, Any]:
    public = base64.b64encode(os.urandom(32)).decode().rstrip("=")
    return {"user_id": user_id, "usage": ["master"], "keys": {f"ed25519:{public}": public}}


async def current_master(bridge: BridgeClient, token: str, user_id: str) -> Any:
    resp = await bridge.post(QUERY, json={"device_keys": {user_id: []}}, headers=auth(token))
    return (await resp.json()).get("master_keys", {}).get(user_id, {}).get("keys")


async def test_first_setup_passes_reset_needs_oauth(bridge: BridgeClient, login: Login) -> None:
    alice = new_localpart("alice")
    user_id = f"@{alice}:{SERVER_NAME}"
    token = await login(alice, "DEVA")
    first = master_key(user_id)

    resp = await bridge.post(UPLOAD, json={"master_key": first}, headers=auth(token))
    assert resp.status == 200, await resp.text()
    assert await current_master(bridge, token, user_id) == first["keys"]

    # Sending the same keys again is harmless and passes.
    resp = await bridge.post(UPLOAD, json={"master_key": first}, headers=auth(token))
    assert resp.status == 200, await resp.text()

    resp = await bridge.post(UPLOAD, json={"master_key": master_key(user_id)}, headers=auth(token))
    assert resp.status == 401
    answer = await resp.json()
    assert {"stages": ["m.oauth"]} in answer["flows"]
    assert answer["params"]["m.oauth"]["url"].endswith("?action=org.matrix.cross_signing_reset")
    assert await current_master(bridge, token, user_id) == first["keys"]
