"""Closed doors: endpoints the authentication service owns.

Requests the bridge forwards carry appservice identity, and the homeserver
skips its own user-interactive auth for those. Left open, any token could
deactivate its account, change its password or delete other devices without
re-authenticating. They are refused before any token is even looked at.

They are refused with the status and errcode Synapse answers in MAS mode,
whatever the issuer (the table is in README.md, "Closed doors"): there most of
these servlets are not registered at all, which is 404 ``M_UNRECOGNIZED``, or
405 where Synapse still routes the path for other methods. The message names
the account management URL instead of Synapse's "Unrecognized request".
"""

from __future__ import annotations

import functools
import json
import re

from aiohttp import web

from bridge.errors import BadRequest, Forbidden, MatrixError
from bridge.http.paths import CLIENT
from bridge.routes.mas_compat import COMPAT_PATH
from bridge.state import CONFIG, ISSUER_METADATA, LIVE, METRICS

_ANY = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
_WRITE = _ANY - {"GET", "HEAD", "OPTIONS"}
_THREEPIDS = "Changing third-party identifiers"
_REGISTRATION = "Registration"

_DEVICES = "Deleting devices"
# What the user is trying to do → the rule's name in the metrics.
_RULES = {
    "Account deactivation": "account_deactivation",
    "Changing the password": "password",
    _THREEPIDS: "threepid",
    _DEVICES: "delete_devices",
    _REGISTRATION: "registration",
    "Issuing login tokens": "login_token",
    "Logging out": "logout",
}

# (methods, path pattern, what the user is trying to do)
CLOSED_DOORS = [
    (_WRITE, re.compile(rf"^{CLIENT}/account/deactivate$"), "Account deactivation"),
    (_WRITE, re.compile(rf"^{CLIENT}/account/password(?:/.*)?$"), "Changing the password"),
    (_WRITE, re.compile(rf"^{CLIENT}/account/3pid(?:/.*)?$"), _THREEPIDS),
    # Where a 3PID validation link or code is submitted (unstable prefix in Synapse).
    (_ANY, re.compile(rf"^{CLIENT}/add_threepid/[^/]*/submit_token$"), _THREEPIDS),
    (_WRITE, re.compile(rf"^{CLIENT}/delete_devices$"), _DEVICES),
    # Any ID, the empty one included (Synapse routes DELETE /devices/ too).
    (frozenset({"DELETE"}), re.compile(rf"^{CLIENT}/devices(?:/.*)?$"), _DEVICES),
    (_ANY, re.compile(rf"^{CLIENT}/register(?:/.*)?$"), _REGISTRATION),
    (_ANY, re.compile(rf"^{CLIENT}/registration/[^/]*/submit_token$"), _REGISTRATION),
    # A homeserver-native login token minted without re-authentication would
    # outlive the OAuth session it came from.
    (_WRITE, re.compile(rf"^{CLIENT}/login/(?:get_token|token)$"), "Issuing login tokens"),
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


@functools.lru_cache(maxsize=4096)
def closed_door(method: str, path: str) -> str | None:
    """What a request to a closed door tries to do, or None if the door is open
    (cached: a pure function of the two, asked on every request)."""
    for methods, pattern, what in CLOSED_DOORS:
        if method in methods and pattern.match(path):
            return what
    return None


# Synapse's own routing in MAS mode, for the paths of closed doors it still routes
# (``client_patterns``: r0, v3 and unstable), matched as Synapse matches them: on the
# raw path, HEAD served as GET. Each with the methods it serves and Synapse's answer
# to a closed door of that method; any other method is 405.
_SYNAPSE_CLIENT = r"/_matrix/client/(?:r0|v3|unstable)"
_NOT_REGISTERED = (404, "M_UNRECOGNIZED")
# RegisterAppServiceOnlyRestServlet: see registration_refusal.
_REGISTER_ROUTE = re.compile(rf"{_SYNAPSE_CLIENT}/register")
_MAS_MODE_ROUTES = [
    (_REGISTER_ROUTE, frozenset({"POST"}), (403, "M_FORBIDDEN")),
    # ThreepidRestServlet.on_POST: 404 "Not found" before authentication.
    (re.compile(rf"{_SYNAPSE_CLIENT}/account/3pid"), frozenset({"GET", "POST"}), _NOT_REGISTERED),
    # Served by Synapse in MAS mode (nothing in them needs re-authentication); the
    # bridge keeps them closed, so this answer is the bridge's own.
    (
        re.compile(rf"{_SYNAPSE_CLIENT}/account/3pid/(?:bind|unbind)"),
        frozenset({"POST"}),
        (403, "M_FORBIDDEN"),
    ),
    (re.compile(rf"{_SYNAPSE_CLIENT}/devices"), frozenset({"GET"}), _NOT_REGISTERED),
    # DeviceRestServlet.on_DELETE: 404 for anyone but an appservice (after authentication).
    (
        re.compile(rf"{_SYNAPSE_CLIENT}/devices/[^/]*"),
        frozenset({"GET", "PUT", "DELETE"}),
        _NOT_REGISTERED,
    ),
]


def mas_mode_answer(method: str, raw_path: str) -> tuple[int, str]:
    """(status, errcode) of Synapse in MAS mode for a closed door: ``raw_path`` as sent."""
    method = "GET" if method == "HEAD" else method
    for pattern, served, answer in _MAS_MODE_ROUTES:
        if pattern.fullmatch(raw_path):
            return answer if method in served else (405, "M_UNRECOGNIZED")
    return _NOT_REGISTERED


def account_management_url(request: web.Request) -> str:
    """Where users manage their account; the issuer itself when none is known."""
    return request.app[ISSUER_METADATA].account_url() or request.app[CONFIG].issuer.issuer


def refusal(request: web.Request, what: str) -> MatrixError:
    """The error for a closed door: Synapse's status and errcode in MAS mode, and a
    message naming where the user can do it instead."""
    status, errcode = mas_mode_answer(request.method, request.rel_url.raw_path)
    where = account_management_url(request)
    return MatrixError(
        f"{what} is handled by the authentication service: {where}",
        status=status,
        errcode=errcode,
    )


_APPSERVICE_REGISTRATION = "m.login.application_service"


async def registration_refusal(request: web.Request) -> MatrixError:
    """``POST /register`` where Synapse in MAS mode keeps its appservice-only servlet
    (``RegisterAppServiceOnlyRestServlet``), whose answer depends on the body: its
    checks, in its order. Where it would finally look the token up as an appservice's
    and answer 401 ``M_UNKNOWN_TOKEN`` (a client logs out on that, and the token may
    well be valid), the bridge answers 403: no appservice registers through it.
    """
    body = await request.read()  # bounded by the application's client_max_size
    try:
        parsed = json.loads(body.decode(), parse_constant=_not_json)
    except ValueError:  # UnicodeDecodeError included
        return BadRequest("Content not JSON.", errcode="M_NOT_JSON")
    if not isinstance(parsed, dict):
        return BadRequest("Content must be a JSON object.", errcode="M_BAD_JSON")
    if parsed.get("type") != _APPSERVICE_REGISTRATION:
        return refusal(request, _REGISTRATION)
    if not parsed.get("inhibit_login"):
        return BadRequest(
            "This server uses OAuth2, so the inhibit_login parameter must be set to true "
            "for appservice registrations.",
            errcode="M_APPSERVICE_LOGIN_UNSUPPORTED",
        )
    kind = request.query.get("kind", "user")
    if kind == "guest":
        return MatrixError("Guest access is disabled", status=403)
    if kind != "user":
        return BadRequest(f"Do not understand membership kind: {kind}", errcode="M_UNRECOGNIZED")
    username = parsed.get("username")
    if not isinstance(username, str) or len(username) > 512:
        return MatrixError("Invalid username", status=400)
    if not request.headers.getall("Authorization", []) and "access_token" not in request.query:
        return MatrixError(
            f"Appservice token must be provided when using a type of {_APPSERVICE_REGISTRATION}",
            status=400,
        )
    return Forbidden("Only application services may use this endpoint")


def _not_json(constant: str) -> None:
    """Synapse's JSON decoder refuses NaN and the infinities."""
    raise ValueError(f"Invalid JSON value: {constant}")


def admin_api_allowed(allowlist: tuple[str, ...], path: str) -> bool:
    return any(path == p.rstrip("/") or path.startswith(p.rstrip("/") + "/") for p in allowlist)


async def refuse(request: web.Request, path: str) -> None:
    """Raise the refusal of a closed door, an appservice-only endpoint or an admin
    path outside the allow-list; nothing for anything else."""
    config = request.app[CONFIG]
    if (config.issuer.kind == "mas" or config.login is not None) and COMPAT_PATH.match(
        request.rel_url.raw_path
    ):
        return  # MAS compatibility (bridge.routes.mas_compat) or the bridge's (bridge.login)
    what = closed_door(request.method, path)
    if what is not None:
        request.app[METRICS].closed_door[_RULES[what]].inc()
        if (
            what == _REGISTRATION
            and request.method == "POST"
            and _REGISTER_ROUTE.fullmatch(request.rel_url.raw_path)
        ):
            raise await registration_refusal(request)
        raise refusal(request, what)
    if any(rx.match(path) for rx in APPSERVICE_ONLY):
        request.app[METRICS].closed_door["appservice_only"].inc()
        raise Forbidden("Only application services may use this endpoint")
    if path.startswith("/_synapse/admin") and not admin_api_allowed(
        request.app[LIVE].admin_api_allowlist, path
    ):
        request.app[METRICS].closed_door["admin_api"].inc()
        raise Forbidden("The homeserver admin API is not exposed by this gateway")
