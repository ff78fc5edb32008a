# ruff: noqa: E501  (one closed door per line reads better than wrapped dicts)
"""Endpoints the authentication service owns are refused, and nothing happens on Synapse.

Requests forwarded with appservice identity skip Synapse's user-interactive
auth, so each of these would otherwise succeed with a plain access token.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import BridgeClient, Login, auth, new_localpart
from tests.support.issuer import TestIssuer
from tests.support.stack import SERVER_NAME

V3 = "/_matrix/client/v3"

CLOSED: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", f"{V3}/account/deactivate", {"erase": True}),
    ("POST", "/_matrix/client/r0/account/deactivate", {}),
    ("POST", f"{V3}/account/password", {"new_password": "pwned", "logout_devices": True}),
    ("POST", f"{V3}/account/password/email/requestToken", {"client_secret": "x", "email": "a@b.c", "send_attempt": 1}),
    ("POST", f"{V3}/account/3pid/add", {"client_secret": "x", "sid": "y"}),
    ("POST", f"{V3}/account/3pid/bind", {"client_secret": "x", "sid": "y", "id_server": "127.0.0.1"}),
    ("POST", f"{V3}/account/3pid/delete", {"medium": "email", "address": "a@b.c"}),
    ("POST", f"{V3}/account/3pid/unbind", {"medium": "email", "address": "a@b.c"}),
    ("POST", f"{V3}/account/3pid/email/requestToken", {"client_secret": "x", "email": "a@b.c", "send_attempt": 1}),
    ("POST", f"{V3}/account/3pid/msisdn/requestToken", {"client_secret": "x", "country": "GB", "phone_number": "1", "send_attempt": 1}),
    ("POST", f"{V3}/delete_devices", {"devices": ["DEVA", "DEVB"]}),
    ("DELETE", f"{V3}/devices/DEVB", {}),
    ("DELETE", f"{V3}/devices/DEVA", {}),
    ("POST", f"{V3}/register", {"username": "intruder", "password": "x"}),
    ("POST", f"{V3}/register?kind=guest", {}),
    ("GET", f"{V3}/register/available?username=someone", {}),
    ("POST", f"{V3}/login", {"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "victim"}}),
    ("POST", "/_matrix/client/v1/login/get_token", {}),
    ("POST", f"{V3}/logout", {}),
    ("POST", f"{V3}/logout/all", {}),
    ("GET", "/_synapse/admin/v2/users/@victim:bridge.test", {}),
    ("POST", f"{V3}//account//deactivate/", {}),
    ("POST", f"{V3}/account/%64eactivate", {}),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body"), CLOSED, ids=[f"{m} {p}" for m, p, _ in CLOSED])
async def test_closed_door_refused_and_nothing_changes(
    bridge: BridgeClient,
    login: Login,
    synapse_admin: Any,
    issuer: TestIssuer,
    method: str,
    path: str,
    body: Any,
) -> None:
    alice = new_localpart("alice")
    user_id = f"@{alice}:{SERVER_NAME}"
    token_a = await login(alice, "DEVA")
    # Both devices exist on Synapse before the attempt.
    token_b = await login(alice, "DEVB")
    for token in (token_a, token_b):
        assert (await bridge.get(f"{V3}/account/whoami", headers=auth(token))).status == 200

    kwargs: dict[str, Any] = {"headers": auth(token_a)}
    if method != "GET":
        kwargs["json"] = body
    resp = await bridge.request(method, path, **kwargs)
    answer = await resp.json()
    assert resp.status == 403, answer
    assert answer["errcode"] == "M_FORBIDDEN"
    if not path.startswith("/_synapse/admin"):
        # No account management URL is configured: the user is sent to the issuer.
        assert issuer.url in answer["error"]

    user = await synapse_admin(f"/_synapse/admin/v2/users/{user_id}")
    assert user["deactivated"] is False
    devices = await synapse_admin(f"/_synapse/admin/v2/users/{user_id}/devices")
    assert sorted(d["device_id"] for d in devices["devices"]) == ["DEVA", "DEVB"]
    # The token still works: nothing was logged out either.
    assert (await bridge.get(f"{V3}/account/whoami", headers=auth(token_a))).status == 200
