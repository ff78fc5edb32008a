"""``GET /capabilities``: the account capabilities the authentication service owns are off.

Synapse in MAS mode reports ``m.change_password``, ``m.3pid_changes`` and
``m.get_login_token`` as ``{"enabled": false}`` (its configuration cannot
enable them there); the bridge closes the same doors (:mod:`bridge.routes.closed_doors`)
whatever the issuer, so it says the same, whatever the homeserver itself
allows. The homeserver's other capabilities pass through unchanged, and an
answer that is not a 200 JSON object passes through as it is.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from bridge.http.paths import CLIENT
from bridge.state import FORWARDER, IDENTITY

CAPABILITIES = re.compile(rf"{CLIENT}/capabilities")
# What the authentication service owns: password changes, third-party identifiers,
# and login tokens for another device (MSC3882).
DISABLED = ("m.change_password", "m.3pid_changes", "m.get_login_token")


def without_owned_capabilities(answer: dict[str, Any]) -> dict[str, Any]:
    """The homeserver's answer, with the capabilities of :data:`DISABLED` turned off."""
    capabilities = answer.get("capabilities")
    if not isinstance(capabilities, dict):
        capabilities = {}
    return {
        **answer,
        "capabilities": {**capabilities, **{name: {"enabled": False} for name in DISABLED}},
    }


async def capabilities(request: web.Request) -> web.StreamResponse:
    """Forward ``GET /capabilities`` and rewrite the answer."""
    return await request.app[FORWARDER].forward(
        request, request[IDENTITY], rewrite=without_owned_capabilities
    )
