"""Authentication: bearer token → :class:`Identity` on the request.

It acts on forwarded routes only (those named ``forward:*``); the bridge's own
endpoints (well-known, discovery) need no token. A forwarded request without
a token passes anonymously only to the public endpoints the spec leaves
unauthenticated; anywhere else it is 401 ``M_MISSING_TOKEN`` without the
homeserver being asked.
"""

from __future__ import annotations

import hmac
import re

from aiohttp import web

from bridge.auth.identity import Identity
from bridge.errors import BadRequest, MissingToken, UnknownToken
from bridge.http.paths import CLIENT
from bridge.state import AUTHENTICATOR, IDENTITY, LOGOUT_MOMENTS, PATH

FORWARDED_ROUTE = "forward:"

# What a token may look like: visible ASCII (RFC 6750's b64token, and every
# Matrix/OAuth token seen in the wild, fits), and no longer than any real one
# (JWT access tokens with many claims pass 4 KiB). Anything else is refused
# without asking the issuer.
MAX_TOKEN_LENGTH = 12 * 1024
_TOKEN = re.compile(rf"[\x21-\x7e]{{1,{MAX_TOKEN_LENGTH}}}")
# The longest header field the server reads (aiohttp's default is 8 KiB): room
# for a 64 KiB token, which is then refused here with a Matrix 401.
MAX_HEADER_FIELD = 72 * 1024

_PUBLIC = [
    (frozenset({"GET"}), re.compile(r"^/_matrix/client/versions$")),
    (frozenset({"GET", "POST"}), re.compile(rf"^{CLIENT}/login$")),
    (frozenset({"GET"}), re.compile(rf"^{CLIENT}/login/sso/redirect(?:/.*)?$")),
    (frozenset({"GET"}), re.compile(rf"^{CLIENT}/publicRooms$")),
    (frozenset({"GET"}), re.compile(rf"^{CLIENT}/profile/.+$")),
    (frozenset({"GET"}), re.compile(rf"^{CLIENT}/directory/room/.+$")),
    (frozenset({"GET"}), re.compile(rf"^{CLIENT}/room_summary/.+$")),
    (frozenset({"GET"}), re.compile(r"^/_matrix/media/(?:r0|v3)/(?:download|thumbnail)/.+$")),
    # MSC4108 QR-code login rendezvous: deliberately unauthenticated.
    (
        frozenset({"GET", "POST", "PUT", "DELETE"}),
        re.compile(r"^/_matrix/client/unstable/org\.matrix\.msc4108/rendezvous(?:/.*)?$"),
    ),
]


def is_public(method: str, path: str) -> bool:
    """Whether ``method path`` (normalised) may be forwarded without a token."""
    method = "GET" if method == "HEAD" else method
    return any(method in methods and rx.fullmatch(path) for methods, rx in _PUBLIC)


def bearer_token(request: web.Request) -> str | None:
    """The access token from the ``Authorization`` header or the deprecated query parameter.

    Two headers, two parameters, or a header and a parameter that differ are
    ambiguous: 400, rather than guessing which one the client meant.
    """
    headers = request.headers.getall("Authorization", [])
    params = [t for t in request.rel_url.query.getall("access_token", []) if t]
    if len(headers) > 1:
        raise BadRequest("Too many Authorization headers")
    if len(params) > 1:
        raise BadRequest("Too many access_token parameters")
    header_token = None
    if headers:
        scheme, _, value = headers[0].strip().partition(" ")
        header_token = value.strip()
        if scheme.lower() != "bearer" or not header_token:
            raise MissingToken("Invalid Authorization header")
        if not _TOKEN.fullmatch(header_token):
            # Not valid UTF-8, control characters, or absurdly long.
            raise UnknownToken("Invalid access token")
    if not params:
        return header_token
    if not _TOKEN.fullmatch(params[0]):
        raise UnknownToken("Invalid access token")
    if header_token is not None and not hmac.compare_digest(
        header_token.encode(), params[0].encode()
    ):
        raise BadRequest("The Authorization header and the access_token parameter differ")
    return params[0]


async def authenticate(request: web.Request) -> None:
    """Set ``request[IDENTITY]`` on a forwarded route (None: anonymous, where allowed)."""
    name = request.match_info.route.name
    if name is None or not name.startswith(FORWARDED_ROUTE):
        return
    token = bearer_token(request)
    if token is None:
        if not is_public(request.method, request[PATH]):
            raise MissingToken("Missing access token")
        request[IDENTITY] = None
    else:
        request[IDENTITY] = await identify(request, token)


class LoggedOut(UnknownToken):
    """A valid token issued before a logout of its device or user."""


async def identify(request: web.Request, token: str) -> Identity:
    """The identity behind ``token`` (every route that takes a token asks here).

    A fresh cached session is answered without a coroutine (the hot path); a
    token issued before a logout of its device or user (bridge.auth.logout_moments)
    is refused whatever the cache still holds: two dict lookups.
    """
    authenticator = request.app[AUTHENTICATOR]
    identity = authenticator.cached(token)
    if identity is None:
        identity = await authenticator.authenticate(token)
    if request.app[LOGOUT_MOMENTS].refuses(identity, token):
        raise LoggedOut("Token has been logged out")
    return identity
