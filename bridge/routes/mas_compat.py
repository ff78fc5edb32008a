"""MAS's compatibility layer: legacy login, logout and refresh, served by MAS.

With ``issuer.kind: mas``, ``/login`` (``GET`` and ``POST``), ``/logout``,
``/logout/all``, ``/refresh`` and ``/login/sso/redirect[/{idpId}]`` belong to
MAS, which serves them for clients that are not OAuth-native (its "compat"
sessions, ``mct_`` tokens). The bridge streams them to MAS unchanged, path,
query, body and the client's own ``Authorization`` included (MAS checks its
compat tokens itself), with ``X-Forwarded-For``/``-Proto`` set from the
connection so MAS sees the real client. Their closed-door rules give way to
this routing in MAS mode only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from yarl import URL

from bridge.errors import MatrixError
from bridge.forward.forwarder import refuse_form_body, stream_back
from bridge.http.headers import upstream_headers
from bridge.state import CONFIG

log = logging.getLogger("bridge.mas_compat")

# The paths MAS's compatibility layer serves (MSC3861 / MAS compat routes).
COMPAT_PATH = re.compile(
    r"^/_matrix/client/(?:r0|v3)/(?:login|logout|logout/all|refresh"
    r"|login/sso/redirect(?:/[^/]+)?)$"
)
COMPAT_SESSION = web.AppKey("compat_session", aiohttp.ClientSession)


async def compat_session(app: web.Application) -> AsyncIterator[None]:
    """The pooled session to MAS (bodies passed through as they are)."""
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("Accept", "Accept-Encoding", "Content-Type", "User-Agent"),
    ) as session:
        app[COMPAT_SESSION] = session
        yield


async def to_mas(request: web.Request) -> web.StreamResponse:
    """Stream the request to MAS's compatibility layer and its answer back."""
    refuse_form_body(request.headers)
    config = request.app[CONFIG]
    # The client's own token goes on: MAS's compatibility layer is its issuer.
    headers = upstream_headers(
        request.headers,
        peer=request.remote,
        scheme=request.scheme,
        trusted_proxies=config.listen.trusted_proxies,
        authorization=request.headers.get("Authorization"),
    )
    url = URL(config.issuer.compat_url.rstrip("/") + request.rel_url.raw_path_qs, encoded=True)
    timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=60)
    try:
        upstream = await request.app[COMPAT_SESSION].request(
            request.method,
            url,
            headers=headers,
            data=request.content if request.body_exists else None,
            allow_redirects=False,
            timeout=timeout,
        )
    except (aiohttp.ClientError, TimeoutError) as e:
        log.warning("MAS compatibility request failed: %s", type(e).__name__)
        raise MatrixError(
            "The authentication service is unreachable",
            status=503,
            headers={"Retry-After": "5"},
        ) from e
    return await stream_back(request, upstream)


def add_routes(app: web.Application) -> None:
    """Before the client catch-all, so these paths reach MAS, not the homeserver."""
    app.cleanup_ctx.append(compat_session)
    for method in ("GET", "POST"):
        app.router.add_route(
            method, "/_matrix/client/{version:r0|v3}/login", to_mas, name=f"compat:login:{method}"
        )
    for name, path in (
        ("logout", "/logout"),
        ("logout_all", "/logout/all"),
        ("refresh", "/refresh"),
    ):
        app.router.add_post(
            f"/_matrix/client/{{version:r0|v3}}{path}", to_mas, name=f"compat:{name}"
        )
    app.router.add_get(
        "/_matrix/client/{version:r0|v3}/login/sso/redirect", to_mas, name="compat:sso"
    )
    app.router.add_get(
        "/_matrix/client/{version:r0|v3}/login/sso/redirect/{idp}", to_mas, name="compat:sso_idp"
    )
