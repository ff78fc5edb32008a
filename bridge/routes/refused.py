"""Closed doors: endpoints the authentication service owns.

Requests the bridge forwards carry appservice identity, and the homeserver
skips its own user-interactive auth for those. Left open, any token could
deactivate its account, change its password or delete other devices without
re-authenticating. They are refused before any token is even looked at.
"""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.typedefs import Handler

from bridge.errors import Forbidden
from bridge.paths import CLIENT, normalize
from bridge.state import CONFIG, ISSUER_METADATA, PATH

_ANY = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
_WRITE = _ANY - {"GET", "HEAD", "OPTIONS"}

# (methods, path pattern, what the user is trying to do)
CLOSED_DOORS = [
    (_WRITE, re.compile(rf"^{CLIENT}/account/deactivate$"), "Account deactivation"),
    (_WRITE, re.compile(rf"^{CLIENT}/account/password(?:/.*)?$"), "Password changes"),
    (_WRITE, re.compile(rf"^{CLIENT}/account/3pid(?:/.*)?$"), "Third-party identifiers"),
    (_WRITE, re.compile(rf"^{CLIENT}/delete_devices$"), "Device deletion"),
    # Any ID, the empty one included (Synapse routes DELETE /devices/ too).
    (frozenset({"DELETE"}), re.compile(rf"^{CLIENT}/devices(?:/.*)?$"), "Device deletion"),
    (_ANY, re.compile(rf"^{CLIENT}/register(?:/.*)?$"), "Registration"),
    # A homeserver-native login token minted without re-authentication would
    # outlive the OAuth session it came from.
    (_WRITE, re.compile(rf"^{CLIENT}/login/(?:get_token|token)$"), "Login tokens"),
    # Forwarded as the appservice, these would delete the homeserver device
    # while the OAuth session lives on.
    (_WRITE, re.compile(rf"^{CLIENT}/logout(?:/all)?$"), "Logging out"),
]

# Endpoints only an application service may call. Forwarded, any user would
# call them as the bridge's appservice: publish any room in its appservice
# room list, ping it (retrying its transaction queue), or use unstable
# appservice endpoints such as MSC4512's federation proxy.
APPSERVICE_ONLY = [
    re.compile(rf"^{CLIENT}/directory/list/appservice(?:/.*)?$"),
    re.compile(rf"^{CLIENT}/appservice(?:/.*)?$"),
    # MSC4502: whether any user or server is in any room, for appservices with a scope.
    re.compile(r"^/_matrix/client/unstable/io\.element\.msc4502/rooms/[^/]+/is_joined$"),
]


def closed_door(method: str, path: str) -> str | None:
    """What a request to a closed door tries to do, or None if the door is open."""
    for methods, pattern, what in CLOSED_DOORS:
        if method in methods and pattern.match(path):
            return what
    return None


def account_management_url(request: web.Request) -> str:
    """Where users manage their account; the issuer itself when none is known."""
    return request.app[ISSUER_METADATA].account_url() or request.app[CONFIG].issuer.issuer


def refusal(request: web.Request, what: str) -> Forbidden:
    """The error for a closed door, naming where the user can do it instead."""
    where = account_management_url(request)
    return Forbidden(f"{what} is handled by the authentication service: {where}")


def admin_api_allowed(allowlist: tuple[str, ...], path: str) -> bool:
    return any(path == p.rstrip("/") or path.startswith(p.rstrip("/") + "/") for p in allowlist)


@web.middleware
async def refused_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request[PATH] = normalize(request.path)
    what = closed_door(request.method, path)
    if what is not None:
        raise refusal(request, what)
    if any(rx.match(path) for rx in APPSERVICE_ONLY):
        raise Forbidden("Only application services may use this endpoint")
    if path.startswith("/_synapse/admin") and not admin_api_allowed(
        request.app[CONFIG].homeserver.admin_api_allowlist, path
    ):
        raise Forbidden("The homeserver admin API is not exposed by this gateway")
    return await handler(request)
