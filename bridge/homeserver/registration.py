"""The appservice registration file the homeserver loads for the bridge."""

from __future__ import annotations

import re
from typing import Any

from bridge.config import AppserviceConfig, Strategy


def user_namespace(server_name: str) -> str:
    """The registration's user regex: every user of ``server_name``.

    The bridge acts as no user outside it (the homeserver would refuse anyway).
    """
    return f"^@[^:]+:{re.escape(server_name)}$"


def alias_namespace(server_name: str) -> str:
    """The registration's alias regex: every local alias.

    Needed because the homeserver sends alias writes of appservice requests
    down the appservice path, which refuses aliases outside the namespace
    (``M_EXCLUSIVE``). The bridge checks what the homeserver would check for
    a normal user before it forwards them (docs/appservice-privileges.md).
    """
    return f"^#[^:]+:{re.escape(server_name)}$"


def registration(
    appservice: AppserviceConfig, server_name: str, *, strategy: Strategy = "device_login"
) -> dict[str, Any]:
    """The registration document for the bridge's appservice on ``server_name``.

    ``url: null``: the homeserver never pushes transactions, the bridge only
    calls it. The namespaces are not exclusive: an exclusive user namespace
    turns off push rules on Synapse and blocks the users' own registration.
    ``io.element.msc4190`` lets the appservice create devices with ``PUT /devices``
    (``masquerade``); Synapse then refuses appservice login, which
    ``device_login`` needs, so it is only set for ``masquerade``.
    ``rate_limited: true``: the homeserver applies its per-user rate limits to
    the users the bridge acts as, as it would to them directly.
    """
    return {
        "id": appservice.id,
        "url": None,
        "as_token": appservice.as_token,
        "hs_token": appservice.hs_token,
        "sender_localpart": appservice.sender_localpart,
        "rate_limited": True,
        "namespaces": {
            "users": [{"exclusive": False, "regex": user_namespace(server_name)}],
            "aliases": [{"exclusive": False, "regex": alias_namespace(server_name)}],
            "rooms": [],
        },
        **({"io.element.msc4190": True} if strategy == "masquerade" else {}),
    }
