"""The streaming forwarder: one pooled connection pool, bodies streamed both ways.

Request hygiene before anything reaches the homeserver:

- the client's credentials (``Authorization``, ``access_token``) and every
  identity-bearing query parameter (``user_id``, ``device_id``,
  ``org.matrix.msc3202.device_id``, ``ts``) are removed, and the identity
  strategy's own are added;
- transaction IDs in ``PUT .../{txnId}`` paths become an HMAC of
  (user, device, txnId), because the homeserver deduplicates appservice
  transactions per appservice and path, not per user;
- hop-by-hop headers and the client's ``X-Forwarded-*``/``Forwarded`` are
  dropped; ``X-Forwarded-For``/``-Proto`` are set from the connection itself;
- a form-typed body (``application/x-www-form-urlencoded`` or
  ``multipart/form-data``, in any spelling) is refused: Synapse's web layer
  (Twisted) merges such a body into the query arguments, over the identity
  the bridge set.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict
from yarl import URL

from bridge.auth.identity import Identity
from bridge.config import HomeserverConfig
from bridge.errors import BadRequest, HomeserverUnavailable
from bridge.homeserver.appservice import call_json
from bridge.homeserver.strategy import IdentityStrategy
from bridge.paths import CLIENT

log = logging.getLogger("bridge.proxy")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Never passed upstream as the client sent them.
_REQUEST_DROP = HOP_BY_HOP | {
    "host",
    "authorization",
    "expect",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
}
STRIPPED_QUERY = frozenset(
    {"access_token", "user_id", "device_id", "org.matrix.msc3202.device_id", "ts"}
)
# PUT endpoints whose last segment is a transaction ID the homeserver caches
# per (appservice, path): Synapse's register_txn_path() and sendToDevice, with
# its raw-path semantics (segments may be empty).
_TXN_PATH = re.compile(
    rf"^(?P<head>{CLIENT}/"
    r"(?:createRoom|join/[^/]*|sendToDevice/[^/]*"
    r"|rooms/[^/]*/(?:send/[^/]*|redact/[^/]*|forget|join|invite|leave|ban|unban|kick))/)"
    r"(?P<txn>[^/]*)$"
)
_CHUNK = 64 * 1024
# Media types whose bodies a homeserver may read as query arguments.
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


def refuse_form_body(headers: CIMultiDictProxy[str]) -> None:
    """Refuse what the homeserver could parse as query arguments (see the module doc).

    A second ``Content-Type`` never gets here: aiohttp's parser refuses it.
    """
    media_type = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if media_type in _FORM_TYPES:
        raise BadRequest(f"Request bodies of type {media_type} are not accepted")


def _hop_by_hop(headers: Iterable[tuple[str, str]]) -> set[str]:
    """Hop-by-hop names: the fixed ones plus any the ``Connection`` header lists."""
    names = set(HOP_BY_HOP)
    for name, value in headers:
        if name.lower() == "connection":
            names.update(token.strip().lower() for token in value.split(","))
    return names


class Forwarder:
    """Forwards one client request to the homeserver as an identity (or anonymously)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: HomeserverConfig,
        strategy: IdentityStrategy,
        txn_key: bytes,
    ) -> None:
        self._session = session
        self._base = config.url
        self._strategy = strategy
        self._txn_key = txn_key
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=config.connect_timeout, sock_read=config.read_timeout
        )

    def transaction_id(self, identity: Identity, txn_id: str) -> str:
        """The homeserver-side transaction ID: HMAC(user, device, client txnId)."""
        message = "\0".join((identity.user_id, identity.device_id, txn_id)).encode()
        digest = hmac.new(self._txn_key, message, hashlib.sha256).digest()[:18]
        return base64.urlsafe_b64encode(digest).decode()

    def upstream_url(
        self, request: web.Request, identity: Identity | None, params: list[tuple[str, str]]
    ) -> URL:
        raw_path = request.rel_url.raw_path
        query: MultiDict[str] = MultiDict(
            (k, v) for k, v in request.rel_url.query.items() if k not in STRIPPED_QUERY
        )
        if identity is not None and request.method == "PUT" and (m := _TXN_PATH.match(raw_path)):
            # The raw segment is percent-encoded; the HMAC is URL-safe base64.
            raw_path = m["head"] + self.transaction_id(identity, m["txn"])
        query.extend(params)
        return URL(self._base + raw_path, encoded=True).with_query(query)

    def upstream_headers(self, request: web.Request, authorization: str | None) -> CIMultiDict[str]:
        drop = _REQUEST_DROP | _hop_by_hop(request.headers.items())
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in drop)
        if authorization is not None:
            headers["Authorization"] = authorization
        if request.remote:
            headers["X-Forwarded-For"] = request.remote
        headers["X-Forwarded-Proto"] = request.scheme
        return headers

    async def call_as(
        self, identity: Identity, method: str, path: str, body: object
    ) -> tuple[int, dict[str, Any]]:
        """A JSON request the bridge itself makes on the homeserver as ``identity``."""
        await self._strategy.prepare(identity)
        authorization, params = self._strategy.credentials(identity)
        return await call_json(
            self._session,
            method,
            self._base + path,
            authorization=authorization,
            body=body,
            params=params,
            client_timeout=self._timeout,
        )

    async def forward(
        self,
        request: web.Request,
        identity: Identity | None,
        *,
        body: bytes | None = None,
    ) -> web.StreamResponse:
        """Send ``request`` upstream and stream the answer back.

        ``body`` replaces the request body when the bridge had to read it
        (a ``/login`` it inspected); otherwise the body is streamed as it comes.
        """
        refuse_form_body(request.headers)
        authorization: str | None = None
        params: list[tuple[str, str]] = []
        if identity is not None:
            await self._strategy.prepare(identity)
            authorization, params = self._strategy.credentials(identity)
        data: bytes | aiohttp.StreamReader | None = body
        if body is None and request.body_exists:
            data = request.content
        headers = self.upstream_headers(request, authorization)
        if body is not None:
            headers["Content-Length"] = str(len(body))
        try:
            upstream = await self._session.request(
                request.method,
                self.upstream_url(request, identity, params),
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=self._timeout,
            )
        except TimeoutError as e:
            raise HomeserverUnavailable("The homeserver did not answer in time", status=504) from e
        except aiohttp.ClientError as e:
            log.warning("homeserver request failed: %s", type(e).__name__)
            raise HomeserverUnavailable("The homeserver is unreachable") from e

        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            drop = _hop_by_hop(upstream.headers.items())
            for name, value in upstream.headers.items():
                if name.lower() not in drop:
                    response.headers.add(name, value)
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_chunked(_CHUNK):
                    await response.write(chunk)
            except (aiohttp.ClientError, TimeoutError) as e:
                # Headers are gone already: the only honest signal left is to cut
                # the connection, so the client sees a truncated answer as one.
                log.warning("homeserver response broke off: %s", type(e).__name__)
                if request.transport is not None:
                    request.transport.abort()
                return response
            await response.write_eof()
        return response
