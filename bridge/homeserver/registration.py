"""The appservice registration file the homeserver loads for the bridge."""

from __future__ import annotations

import re
from typing import Any

from bridge.config import AppserviceConfig


def registration(appservice: AppserviceConfig, server_name: str) -> dict[str, Any]:
    """The registration document for the bridge's appservice on ``server_name``.

    ``url: null``: the homeserver never pushes transactions, the bridge only
    calls it. The user namespace is not exclusive: an exclusive one turns off
    push rules on Synapse and blocks the users' own registration.
    ``io.element.msc4190`` lets the appservice create devices with ``PUT /devices``.
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
            "users": [{"exclusive": False, "regex": f"^@[^:]+:{re.escape(server_name)}$"}],
            "aliases": [],
            "rooms": [],
        },
        "io.element.msc4190": True,
    }
