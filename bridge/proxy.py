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
import functools
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Iterable
from email.message import EmailMessage
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
# Query parameters the homeserver reads as identity from an appservice request.
# A normal user's token makes them meaningless, so with device tokens only the
# client's own token is removed (and /mutual_rooms?user_id= works).
STRIPPED_QUERY = frozenset(
    {"access_token", "user_id", "device_id", "org.matrix.msc3202.device_id", "ts"}
)
_DEVICE_TOKEN_STRIPPED = frozenset({"access_token"})
# Where ``ts`` is an ordinary parameter (the event's timestamp is chosen by an
# appservice only on send and state): kept even for appservice requests.
_TS_IS_A_PARAMETER = re.compile(
    rf"^(?:{CLIENT}/rooms/[^/]*/timestamp_to_event|/_matrix/(?:media|client)/[^/]+(?:/[^/]+)?"
    r"/preview_url)$"
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
# A JSON object answer in, a JSON object answer out (see Forwarder.forward).
RewriteJSON = Callable[[dict[str, Any]], dict[str, Any]]
# Set anew on a rewritten answer.
_REWRITTEN_HEADERS = frozenset({"content-length", "content-type", "content-encoding"})


def refuse_form_body(headers: CIMultiDictProxy[str]) -> None:
    """Refuse what the homeserver could parse as query arguments (see the module doc).

    A second ``Content-Type`` never gets here: aiohttp's parser refuses it.
    """
    content_type = headers.get("Content-Type")
    if content_type is None:
        return
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in _FORM_TYPES or homeserver_media_type(content_type) in _FORM_TYPES:
        raise BadRequest("Form-encoded request bodies are not accepted")


@functools.lru_cache(maxsize=1024)
def homeserver_media_type(content_type: str) -> str:
    """The media type exactly as Twisted reads it (``twisted.web.http._parseContentType``):
    with the e-mail parser, which also decodes RFC 2047 encoded words, so
    ``=?utf-8?q?application/x-www-form-urlencoded?=`` is a form there.

    Costly (~50 µs), hence cached: clients send few distinct values.
    """
    message = EmailMessage()
    try:
        # Twisted decodes the raw header bytes as latin-1 ("charmap").
        message["content-type"] = content_type.encode("utf-8", "surrogateescape").decode("latin-1")
        return message.get_content_type()
    except Exception:
        return "application/x-www-form-urlencoded"  # unreadable: treat as the worst case


def hop_by_hop(headers: Iterable[tuple[str, str]]) -> set[str]:
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
        self._stripped = STRIPPED_QUERY if strategy.appservice_power else _DEVICE_TOKEN_STRIPPED
        self._txn_key = txn_key
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=config.connect_timeout, sock_read=config.read_timeout
        )

    @property
    def appservice_power(self) -> bool:
        """Whether forwarded requests carry the appservice's identity (see the strategy)."""
        return self._strategy.appservice_power

    def transaction_id(self, identity: Identity, txn_id: str) -> str:
        """The homeserver-side transaction ID: HMAC(user, device, client txnId)."""
        message = "\0".join((identity.user_id, identity.device_id, txn_id)).encode()
        digest = hmac.new(self._txn_key, message, hashlib.sha256).digest()[:18]
        return base64.urlsafe_b64encode(digest).decode()

    def upstream_url(
        self,
        request: web.Request,
        identity: Identity | None,
        params: list[tuple[str, str]],
        *,
        appservice: bool = False,
    ) -> URL:
        raw_path = request.rel_url.raw_path
        stripped = STRIPPED_QUERY if appservice else self._stripped
        if "ts" in stripped and _TS_IS_A_PARAMETER.match(raw_path):
            stripped = stripped - {"ts"}
        query: MultiDict[str] = MultiDict(
            (k, v) for k, v in request.rel_url.query.items() if k not in stripped
        )
        if (
            identity is not None
            and self._strategy.appservice_power
            and request.method == "PUT"
            and (m := _TXN_PATH.match(raw_path))
        ):
            # The raw segment is percent-encoded; the HMAC is URL-safe base64.
            raw_path = m["head"] + self.transaction_id(identity, m["txn"])
        query.extend(params)
        return URL(self._base + raw_path, encoded=True).with_query(query)

    def upstream_headers(self, request: web.Request, authorization: str | None) -> CIMultiDict[str]:
        drop = _REQUEST_DROP | hop_by_hop(request.headers.items())
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in drop)
        if authorization is not None:
            headers["Authorization"] = authorization
        if request.remote:
            headers["X-Forwarded-For"] = request.remote
        headers["X-Forwarded-Proto"] = request.scheme
        return headers

    async def _credentials(
        self, identity: Identity | None, *, write: bool = False, appservice: bool = False
    ) -> tuple[str | None, list[tuple[str, str]]]:
        if identity is None:
            return None, []
        await self._strategy.prepare(identity, write=write)
        if appservice:
            return self._strategy.appservice_credentials(identity)
        return self._strategy.credentials(identity)

    async def call_as(
        self, identity: Identity, method: str, path: str, body: object
    ) -> tuple[int, dict[str, Any]]:
        """A JSON request the bridge itself makes on the homeserver as ``identity``."""
        for attempt in (0, 1):
            authorization, params = await self._credentials(identity)
            assert authorization is not None
            status, answer = await call_json(
                self._session,
                method,
                self._base + path,
                authorization=authorization,
                body=body,
                params=params,
                client_timeout=self._timeout,
            )
            if attempt == 0 and lost_identity(status, answer):
                await self._strategy.heal(identity, authorization)
                continue
            break
        return status, answer

    async def forward(
        self,
        request: web.Request,
        identity: Identity | None,
        *,
        body: bytes | None = None,
        rewrite: RewriteJSON | None = None,
        appservice: bool = False,
    ) -> web.StreamResponse:
        """Send ``request`` upstream and stream the answer back.

        ``body`` replaces the request body when the bridge had to read it
        (a ``/login`` it inspected); otherwise a small body is read first, so
        that the request can be sent again, and a large one is streamed.

        ``rewrite`` changes a small 200 JSON-object answer before it is sent on
        (the homeserver is then asked for it uncompressed); any other answer
        passes through as usual.

        ``appservice`` sends this one request with the appservice's power for
        the user, whatever the strategy (a request the bridge has authorised
        itself: an approved cross-signing reset); the client's identity-bearing
        query parameters are then stripped as they are under ``masquerade``.

        When the homeserver answers that it lost the user, device or token
        the bridge provisioned, the strategy provisions them again and the
        request is sent once more if the bridge still holds its body; never
        more than once. The homeserver's refusal of the bridge's own
        credentials never reaches the client as a 401, which would log it out.
        """
        refuse_form_body(request.headers)
        if body is None and request.body_exists and _small(request.content_length):
            body = await request.read()
        retryable = body is not None or not request.body_exists
        write = request.method not in _SAFE_METHODS
        for attempt in (0, 1):
            authorization, params = await self._credentials(
                identity, write=write, appservice=appservice
            )
            upstream = await self._send(
                request,
                identity,
                authorization,
                params,
                body,
                compressed=rewrite is None,
                appservice=appservice,
            )
            if rewrite is not None and upstream.status == 200:
                return await self._rewrite_back(request, upstream, rewrite)
            if identity is None or upstream.status not in _LOST_STATUSES:
                return await stream_back(request, upstream)
            error = await _read_small(upstream)
            if error is None or not lost_identity(upstream.status, _json_object(error)):
                return await stream_back(request, upstream, prefix=error)
            upstream.release()
            assert authorization is not None
            if attempt == 1:
                log.error("the homeserver refused the device the bridge provisioned again")
                raise HomeserverUnavailable("The homeserver refused the gateway's credentials")
            log.warning("the homeserver lost a provisioned device; provisioning it again")
            await self._strategy.heal(identity, authorization)
            if not retryable:
                raise HomeserverUnavailable(
                    "The homeserver had lost this session; please try again",
                    status=503,
                    headers={"Retry-After": "0"},
                )
        raise AssertionError("unreachable")

    async def _send(
        self,
        request: web.Request,
        identity: Identity | None,
        authorization: str | None,
        params: list[tuple[str, str]],
        body: bytes | None,
        *,
        compressed: bool = True,
        appservice: bool = False,
    ) -> aiohttp.ClientResponse:
        data: bytes | aiohttp.StreamReader | None = body
        if body is None and request.body_exists:
            data = request.content
        headers = self.upstream_headers(request, authorization)
        if not compressed:
            headers.popall("Accept-Encoding", None)
        if body is not None:
            headers["Content-Length"] = str(len(body))
        try:
            return await self._session.request(
                request.method,
                self.upstream_url(request, identity, params, appservice=appservice),
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

    async def _rewrite_back(
        self, request: web.Request, upstream: aiohttp.ClientResponse, rewrite: RewriteJSON
    ) -> web.StreamResponse:
        """A small JSON-object answer, rewritten; anything else streamed back as it is."""
        body = await _read_small(upstream)
        encoded = upstream.headers.get("Content-Encoding", "identity").lower() != "identity"
        if body is None or len(body) > _SMALL_BODY or encoded:
            return await stream_back(request, upstream, prefix=body)
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            return await stream_back(request, upstream, prefix=body)
        upstream.release()
        response = web.json_response(rewrite(answer), status=upstream.status)
        drop = hop_by_hop(upstream.headers.items()) | _REWRITTEN_HEADERS
        for name, value in upstream.headers.items():
            if name.lower() not in drop:
                response.headers.add(name, value)
        return response


# Bodies up to this size are held in memory: a request so it can be sent again,
# an error answer so it can be read.
_SMALL_BODY = 64 * 1024
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Statuses of the homeserver's answers that may mean it lost what the bridge provisioned.
_LOST_STATUSES = frozenset({400, 401, 403})


def _small(content_length: int | None) -> bool:
    return content_length is not None and content_length <= _SMALL_BODY


async def _read_small(upstream: aiohttp.ClientResponse) -> bytes | None:
    """The whole body if it is small (length known or not), else None, having read
    nothing: error answers are small, and Synapse sends them chunked."""
    if upstream.content_length is not None and not _small(upstream.content_length):
        return None
    body = bytearray()
    try:
        while len(body) <= _SMALL_BODY:
            chunk = await upstream.content.read(_SMALL_BODY + 1 - len(body))
            if not chunk:
                return bytes(body)
            body += chunk
    except (aiohttp.ClientError, TimeoutError):
        return bytes(body)
    return bytes(body)  # longer than expected: still the beginning, streamed on by the caller


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(body)
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def lost_identity(status: int, answer: dict[str, Any]) -> bool:
    """Whether the homeserver's error says it lost the user, device or token the bridge
    provisioned: an unknown device token (``device_login``), an unknown device or
    an unregistered user (``masquerade``)."""
    errcode = answer.get("errcode")
    if status == 401:
        return errcode == "M_UNKNOWN_TOKEN"
    if status == 400:
        return errcode == "M_UNKNOWN_DEVICE"
    return (
        status == 403
        and errcode == "M_FORBIDDEN"
        and "not registered" in str(answer.get("error", ""))
    )


async def stream_back(
    request: web.Request, upstream: aiohttp.ClientResponse, prefix: bytes | None = None
) -> web.StreamResponse:
    """Stream the answer to the client; ``prefix`` is what was already read of it."""
    async with upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        drop = hop_by_hop(upstream.headers.items())
        for name, value in upstream.headers.items():
            if name.lower() not in drop:
                response.headers.add(name, value)
        await response.prepare(request)
        try:
            if prefix:
                await response.write(prefix)
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
