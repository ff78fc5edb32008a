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

NOT_REGISTERED = (404, "M_UNRECOGNIZED")  # Synapse in MAS mode: no such servlet
FORBIDDEN = (403, "M_FORBIDDEN")

# (method, path, body, the bridge's status and errcode: Synapse's in MAS mode but for
# 3pid bind/unbind, which Synapse serves there and the bridge keeps closed)
CLOSED: list[tuple[str, str, dict[str, Any], tuple[int, str]]] = [
    ("POST", f"{V3}/account/deactivate", {"erase": True}, NOT_REGISTERED),
    ("POST", "/_matrix/client/r0/account/deactivate", {}, NOT_REGISTERED),
    ("POST", f"{V3}/account/password", {"new_password": "pwned", "logout_devices": True}, NOT_REGISTERED),
    ("POST", f"{V3}/account/password/email/requestToken", {"client_secret": "x", "email": "a@b.c", "send_attempt": 1}, NOT_REGISTERED),
    ("POST", f"{V3}/account/3pid/add", {"client_secret": "x", "sid": "y"}, NOT_REGISTERED),
    ("POST", f"{V3}/account/3pid/bind", {"client_secret": "x", "sid": "y", "id_server": "127.0.0.1"}, FORBIDDEN),
    ("POST", f"{V3}/account/3pid/delete", {"medium": "email", "address": "a@b.c"}, NOT_REGISTERED),
    ("POST", f"{V3}/account/3pid/unbind", {"medium": "email", "address": "a@b.c"}, FORBIDDEN),
    ("POST", f"{V3}/account/3pid/email/requestToken", {"client_secret": "x", "email": "a@b.c", "send_attempt": 1}, NOT_REGISTERED),
    ("POST", f"{V3}/account/3pid/msisdn/requestToken", {"client_secret": "x", "country": "GB", "phone_number": "1", "send_attempt": 1}, NOT_REGISTERED),
    ("POST", f"{V3}/delete_devices", {"devices": ["DEVA", "DEVB"]}, NOT_REGISTERED),
    ("DELETE", f"{V3}/devices/DEVB", {}, NOT_REGISTERED),
    ("DELETE", f"{V3}/devices/DEVA", {}, NOT_REGISTERED),
    ("POST", f"{V3}/register", {"username": "intruder", "password": "x"}, FORBIDDEN),
    ("POST", f"{V3}/register?kind=guest", {}, FORBIDDEN),
    ("GET", f"{V3}/register/available?username=someone", {}, NOT_REGISTERED),
    ("POST", f"{V3}/login", {"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "victim"}}, NOT_REGISTERED),
    ("POST", "/_matrix/client/v1/login/get_token", {}, NOT_REGISTERED),
    ("POST", f"{V3}/logout", {}, NOT_REGISTERED),
    ("POST", f"{V3}/logout/all", {}, NOT_REGISTERED),
    ("GET", "/_synapse/admin/v2/users/@victim:bridge.test", {}, FORBIDDEN),
    # ("//" is refused before any door: tests/http/test_request_attacks.py)
    ("POST", f"{V3}/account/%64eactivate", {}, NOT_REGISTERED),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"), CLOSED, ids=[f"{m} {p}" for m, p, _, _ in CLOSED]
)
async def test_closed_door_refused_and_nothing_changes(
    bridge: BridgeClient,
    login: Login,
    synapse_admin: Any,
    issuer: TestIssuer,
    method: str,
    path: str,
    body: Any,
    expected: tuple[int, str],
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
    assert (resp.status, answer["errcode"]) == expected, answer
    if not path.startswith("/_synapse/admin"):
        # No account management URL is configured: the user is sent to the issuer.
        assert issuer.url in answer["error"]

    user = await synapse_admin(f"/_synapse/admin/v2/users/{user_id}")
    assert user["deactivated"] is False
    devices = await synapse_admin(f"/_synapse/admin/v2/users/{user_id}/devices")
    assert sorted(d["device_id"] for d in devices["devices"]) == ["DEVA", "DEVB"]
    # The token still works: nothing was logged out either.
    assert (await bridge.get(f"{V3}/account/whoami", headers=auth(token_a))).status == 200
