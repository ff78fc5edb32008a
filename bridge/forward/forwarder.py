"""The streaming forwarder: one pooled connection pool, bodies streamed both ways.

Request hygiene before anything reaches the homeserver:

- the client's credentials (``Authorization``, ``access_token``) and every
  identity-bearing query parameter (``user_id``, ``device_id``,
  ``org.matrix.msc3202.device_id``, ``ts``) are removed, and the identity
  strategy's own are added;
- under ``masquerade``, transaction IDs in ``PUT .../{txnId}`` paths get a
  prefix of their own per (user, device) (a keyed hash), because the
  homeserver deduplicates appservice transactions per appservice and path,
  not per user; the prefix is taken out of every JSON answer to that device
  again, so the client finds its own ID in ``unsigned.transaction_id``;
- hop-by-hop headers and every spelling of the client's forwarding and
  identity headers are dropped; ``X-Forwarded-For``/``-Proto`` are set from
  the connection itself, appended to a trusted proxy's (:mod:`bridge.http.headers`);
- a form-typed body (``application/x-www-form-urlencoded`` or
  ``multipart/form-data``, in any spelling) is refused: Synapse's web layer
  (Twisted) merges such a body into the query arguments, over the identity
  the bridge set;
- a body larger than ``listen.max_request_body`` is refused (413) before a
  byte is sent when its length is declared, and cut off when it is not.

Answers: a small one (up to 64 KiB, the usual JSON) is read whole and sent
as one ``web.Response`` (one write to the client); a larger one is streamed
with back-pressure. Long polls (``/sync``, ``/events``, sliding sync) wait
for their own ``timeout`` plus a margin, on a connection pool of their own.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_plus, urlencode

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from bridge.auth.identity import Identity
from bridge.config import BridgeConfig
from bridge.errors import (
    BadRequest,
    HomeserverUnavailable,
    IssuerUnavailable,
    MatrixError,
    UnknownToken,
)
from bridge.homeserver.appservice import call_json
from bridge.homeserver.strategy import IdentityStrategy
from bridge.http.cors import add_cors_headers
from bridge.http.headers import HOP_BY_HOP, connection_named, upstream_headers
from bridge.http.paths import CLIENT
from bridge.http.request_id import HEADER as REQUEST_ID_HEADER
from bridge.http.request_id import REQUEST_ID
from bridge.ops.metrics import Metrics

log = logging.getLogger("bridge.forward")


class AsSent(aiohttp.ClientRequest):
    """A forwarded request: aiohttp adds none of its own headers (``Accept``,
    ``Accept-Encoding``, ``User-Agent``, a default ``Content-Type``); the
    homeserver gets the client's. What ``skip_auto_headers`` with those four
    does, without its per-request sort and two copies of the headers."""

    _NONE_ADDED: CIMultiDict[None] = CIMultiDict(
        (name, None) for name in ("Accept", "Accept-Encoding", "Content-Type", "User-Agent")
    )

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        self._skip_auto_headers = self._NONE_ADDED


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
# Long polls: they wait for their ``timeout`` parameter (milliseconds).
LONG_POLL = re.compile(rf"^{CLIENT}/(?:sync|events)$")
_LONG_POLL_MAX_WAIT = 3600.0
# Media bytes never carry a transaction ID: passed through as they come.
_MEDIA = re.compile(r"^/_matrix/(?:media/|client/v1/media/)")
# Media types whose bodies a homeserver may read as query arguments.
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
# A JSON object answer in, a JSON object answer out (see Forwarder.forward).
RewriteJSON = Callable[[dict[str, Any]], dict[str, Any]]
# Not passed on with a rewritten answer: set anew.
_REWRITTEN_DROP = HOP_BY_HOP | {"content-length", "content-type", "content-encoding"}


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


class RequestTooLarge(MatrixError):
    """The client's body is over ``listen.max_request_body``."""

    status = 413

    def __init__(self) -> None:
        super().__init__("Request body too large", errcode="M_TOO_LARGE")


class _LimitedBody:
    """The client's body streamed on (with back-pressure), cut off past the limit."""

    def __init__(self, content: aiohttp.StreamReader, limit: int) -> None:
        self._content = content
        self._limit = limit
        self.exceeded = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        while chunk := await self._content.readany():
            sent += len(chunk)
            if sent > self._limit:
                self.exceeded = True
                raise RequestTooLarge()
            yield chunk


class Forwarder:
    """Forwards one client request to the homeserver as an identity (or anonymously)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: BridgeConfig,
        strategy: IdentityStrategy,
        txn_key: bytes,
        *,
        long_poll_session: aiohttp.ClientSession | None = None,
        metrics: Metrics | None = None,
        logged_out: Callable[[Identity], bool] = lambda _identity: False,
        revalidate: Callable[[web.Request], Awaitable[Identity | None]] | None = None,
    ) -> None:
        homeserver = config.homeserver
        # Whether an identity's token has been logged out since it was checked
        # (bridge.auth.logout_moments): asked before healing, so that a request that
        # was in flight during a logout cannot provision the device again.
        self._logged_out = logged_out
        # The issuer asked again about the request's token before healing (None: it
        # has none; CachedAuthenticator.revalidate): a device the authentication service
        # ended through another worker or instance, whose cache still holds the
        # token, must not be provisioned again for it.
        self._revalidate = revalidate
        self._metrics = metrics if metrics is not None else Metrics()
        self._duration = self._metrics.homeserver_call_duration["forward"]
        self._long_poll_duration = self._metrics.homeserver_call_duration["long_poll"]
        self._errors = {
            kind: counter
            for (call, kind), counter in self._metrics.homeserver_error.items()
            if call == "forward"
        }
        self._session = session
        self._long_poll_session = long_poll_session or session
        self._base = homeserver.url
        self._strategy = strategy
        self._stripped = STRIPPED_QUERY if strategy.appservice_power else _DEVICE_TOKEN_STRIPPED
        self._txn_key = txn_key
        self._max_body = config.listen.max_request_body
        self._trusted_proxies = config.listen.trusted_proxies
        self._long_poll_margin = homeserver.long_poll_margin
        # sock_connect, not connect: no timer for a pooled connection.
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=homeserver.connect_timeout, sock_read=homeserver.read_timeout
        )

    @property
    def appservice_power(self) -> bool:
        """Whether forwarded requests carry the appservice's identity (see the strategy)."""
        return self._strategy.appservice_power

    def appservice_power_for(self, identity: Identity | None) -> bool:
        """Whether ``identity``'s requests carry the appservice's identity: under
        ``masquerade`` always; under ``device_login`` for a device-less token, which
        has no device token to act with and acts as the user through the appservice."""
        return identity is not None and (
            self._strategy.appservice_power or identity.device_id is None
        )

    def transaction_tag(self, identity: Identity) -> str:
        """The prefix of this device's transaction IDs on the homeserver (masquerade).

        Fixed-length, so that tag + ID is unique per (user, device, ID); a keyed
        hash, so that nobody can write another device's. A device-less token's
        tag is the user's own (no device ID is empty).
        """
        return _tag(self._txn_key, identity.user_id, identity.device_id or "")

    def transaction_id(self, identity: Identity, txn_id: str) -> str:
        """The homeserver-side transaction ID for the client's ``txn_id``."""
        return self.transaction_tag(identity) + txn_id

    def upstream_url(
        self,
        request: web.Request,
        identity: Identity | None,
        params: list[tuple[str, str]],
        *,
        appservice: bool = False,
    ) -> URL:
        raw_path = request.rel_url.raw_path
        powered = self.appservice_power_for(identity)
        if (
            identity is not None
            and powered
            and request.method == "PUT"
            and (m := _TXN_PATH.match(raw_path))
        ):
            # The raw segment stays percent-encoded; the tag needs no encoding.
            raw_path = m["head"] + self.transaction_tag(identity) + m["txn"]
        query = request.rel_url.raw_query_string
        if query:
            stripped = STRIPPED_QUERY if appservice or powered else self._stripped
            if "ts" in stripped and _TS_IS_A_PARAMETER.match(raw_path):
                stripped = stripped - {"ts"}
            query = _kept_query(query, stripped)
        if params:
            own = _encoded_params(tuple(params))
            query = f"{query}&{own}" if query else own
        return URL(
            f"{self._base}{raw_path}?{query}" if query else self._base + raw_path, encoded=True
        )

    def upstream_headers(self, request: web.Request, authorization: str | None) -> CIMultiDict[str]:
        return upstream_headers(
            request.headers,
            peer=request.remote,
            scheme=request.scheme,
            trusted_proxies=self._trusted_proxies,
            authorization=authorization,
        )

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
                metrics=self._metrics,
            )
            if attempt == 0 and lost_identity(status, answer):
                self._refuse_if_logged_out(identity)
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
        """Send ``request`` upstream and send the answer back.

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
        length = request.content_length
        if length is not None and length > self._max_body:
            raise RequestTooLarge()
        if body is None and request.body_exists and length is not None and length <= _SMALL_BODY:
            body = await request.read()
        retryable = body is not None or not request.body_exists
        write = request.method not in _SAFE_METHODS
        # Under masquerade the device's transaction tag is taken out of its answers.
        tag = None
        if (
            identity is not None
            and self.appservice_power_for(identity)
            and not _MEDIA.match(request.rel_url.raw_path)
        ):
            tag = self.transaction_tag(identity).encode()
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
                compressed=rewrite is None and tag is None,
                appservice=appservice,
            )
            if rewrite is not None and upstream.status == 200:
                return await self._rewrite_back(request, upstream, rewrite)
            if identity is None or upstream.status not in _LOST_STATUSES:
                return await send_back(request, upstream, tag=tag)
            error = await _read_small(upstream)
            if error is None or not lost_identity(upstream.status, _json_object(error)):
                return await send_back(request, upstream, prefix=error, tag=tag)
            upstream.release()
            assert authorization is not None
            if attempt == 1:
                log.error("the homeserver refused the device the bridge provisioned again")
                raise HomeserverUnavailable("The homeserver refused the gateway's credentials")
            self._refuse_if_logged_out(identity)
            await self._refuse_unless_still_vouched_for(request, identity)
            log.warning("the homeserver lost a provisioned device; provisioning it again")
            await self._strategy.heal(identity, authorization)
            if not retryable:
                raise HomeserverUnavailable(
                    "The homeserver had lost this session; please try again",
                    status=503,
                    headers={"Retry-After": "0"},
                )
        raise AssertionError("unreachable")

    def _refuse_if_logged_out(self, identity: Identity) -> None:
        if self._logged_out(identity):
            raise UnknownToken("Token has been logged out")

    async def _refuse_unless_still_vouched_for(
        self, request: web.Request, identity: Identity
    ) -> None:
        if self._revalidate is None:
            return
        try:
            again = await self._revalidate(request)  # UnknownToken when no longer active
        except IssuerUnavailable:
            return  # healing as before: the issuer cannot say otherwise now
        if again is not None and again != identity:
            raise UnknownToken("Token no longer names this session")

    def _route(self, request: web.Request) -> tuple[aiohttp.ClientSession, aiohttp.ClientTimeout]:
        """The pool and the read timeout: a long poll waits for its own ``timeout``."""
        if request.method in ("GET", "POST") and LONG_POLL.match(request.rel_url.raw_path):
            wait = _milliseconds(request.rel_url.query.get("timeout"))
            timeout = self._timeout
            if wait is not None:
                sock_read = max(wait + self._long_poll_margin, self._timeout.sock_read or 0)
                timeout = aiohttp.ClientTimeout(
                    total=None, sock_connect=self._timeout.sock_connect, sock_read=sock_read
                )
            return self._long_poll_session, timeout
        return self._session, self._timeout

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
        data: bytes | _LimitedBody | None = body
        if body is None and request.body_exists:
            data = _LimitedBody(request.content, self._max_body)
        headers = self.upstream_headers(request, authorization)
        request_id = request.get(REQUEST_ID)
        if request_id is not None:
            headers[REQUEST_ID_HEADER] = request_id
        if not compressed:
            headers.popall("Accept-Encoding", None)
        if body is not None:
            headers["Content-Length"] = str(len(body))
        session, timeout = self._route(request)
        started = time.perf_counter()
        try:
            upstream = await session.request(
                request.method,
                self.upstream_url(request, identity, params, appservice=appservice),
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=timeout,
            )
        except TimeoutError as e:
            self._errors["timeout"].inc()
            raise HomeserverUnavailable("The homeserver did not answer in time", status=504) from e
        except (aiohttp.ClientError, RequestTooLarge) as e:
            if isinstance(data, _LimitedBody) and data.exceeded:
                raise RequestTooLarge() from None
            self._errors["refused"].inc()
            log.warning("homeserver request failed: %s", type(e).__name__)
            raise HomeserverUnavailable("The homeserver is unreachable") from e
        finally:
            waited = time.perf_counter() - started
            if session is self._session:
                self._duration.observe(waited)
            else:
                self._long_poll_duration.observe(waited)
        if upstream.status >= 500:
            self._errors["5xx"].inc()
        return upstream

    async def _rewrite_back(
        self, request: web.Request, upstream: aiohttp.ClientResponse, rewrite: RewriteJSON
    ) -> web.StreamResponse:
        """A small JSON-object answer, rewritten; anything else streamed back as it is."""
        body = await _read_small(upstream)
        encoded = upstream.headers.get("Content-Encoding", "identity").lower() != "identity"
        if body is None or len(body) > _SMALL_BODY or encoded:
            return await send_back(request, upstream, prefix=body)
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            return await send_back(request, upstream, prefix=body)
        upstream.release()
        response = web.json_response(rewrite(answer), status=upstream.status)
        response.headers.extend(_response_headers(upstream.headers, _REWRITTEN_DROP))
        return response


@functools.lru_cache(maxsize=65536)
def _tag(key: bytes, user_id: str, device_id: str) -> str:
    digest = hmac.new(key, f"{user_id}\0{device_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:15]).decode()  # 20 characters, no padding


@functools.lru_cache(maxsize=65536)
def _encoded_params(params: tuple[tuple[str, str], ...]) -> str:
    return urlencode(params, quote_via=quote)


def _kept_query(raw_query: str, stripped: frozenset[str]) -> str:
    """The client's raw query string without the ``stripped`` parameters.

    Names are decoded as the homeserver decodes them (``+`` is a space,
    percent-escapes in any case), so no spelling of a stripped name survives.
    Twisted also splits parameters at ``;``: a query with one is parsed and
    encoded again, so that the homeserver reads exactly the parameters checked.
    """
    if ";" in raw_query:
        pairs = parse_qsl(raw_query, keep_blank_values=True)
        return urlencode([(k, v) for k, v in pairs if k not in stripped], quote_via=quote)
    return "&".join(
        part
        for part in raw_query.split("&")
        if part and unquote_plus(part.partition("=")[0]) not in stripped
    )


def _milliseconds(value: str | None) -> float | None:
    """A long poll's ``timeout`` in seconds (bounded), or None when absent or unreadable."""
    if value is None:
        return None
    try:
        wait = int(value) / 1000
    except ValueError:
        return None
    return min(max(wait, 0.0), _LONG_POLL_MAX_WAIT)


# Bodies up to this size are held in memory: a request so it can be sent again,
# an answer so it can be sent in one piece (or read, when it is an error).
_SMALL_BODY = 64 * 1024
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Statuses of the homeserver's answers that may mean it lost what the bridge provisioned.
_LOST_STATUSES = frozenset({400, 401, 403})
# Answers the bridge asked uncompressed (to restore transaction IDs) are
# compressed again for a client that accepts it, from this size on.
_COMPRESS_FROM = 1024
# Answers that have no body, whatever their headers say.
_BODILESS = frozenset({204, 304})
# Not passed on with an answer sent in one piece: aiohttp sets the length itself.
_WHOLE_DROP = HOP_BY_HOP | {"content-length"}


def _small(content_length: int | None) -> bool:
    return content_length is not None and content_length <= _SMALL_BODY


async def _read_small(upstream: aiohttp.ClientResponse) -> bytes | None:
    """The whole body if it is small (length known or not), else None, having read
    nothing: error answers are small, and Synapse sends them chunked. A break
    leaves what was read."""
    if upstream.content_length is not None and not _small(upstream.content_length):
        return None
    body = bytearray()
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        await _read_head(upstream, body)
    return bytes(body)


async def _read_head(upstream: aiohttp.ClientResponse, body: bytearray) -> None:
    """Read into ``body`` up to one byte more than a small body (all of a small one,
    and then the stream is at its end); a break raises."""
    while len(body) <= _SMALL_BODY:
        chunk = await upstream.content.read(_SMALL_BODY + 1 - len(body))
        if not chunk:
            return
        body += chunk


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


def _response_headers(
    upstream: CIMultiDictProxy[str], drop: frozenset[str] = HOP_BY_HOP
) -> list[tuple[str, str]]:
    """The homeserver's answer headers without those in ``drop`` (hop-by-hop ones and
    more) and those its ``Connection`` names (a list: the answer makes its own
    multidict of it)."""
    named = connection_named(upstream)
    if not named <= drop:
        drop = drop | named
    return [(k, v) for k, v in upstream.items() if k.lower() not in drop]


def _is_json(upstream: aiohttp.ClientResponse) -> bool:
    headers = upstream.headers
    content_type = headers.get("Content-Type", "")
    return content_type[:16].lower() == "application/json" and "Content-Encoding" not in headers


async def send_back(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    prefix: bytes | None = None,
    *,
    tag: bytes | None = None,
) -> web.StreamResponse:
    """The answer for the client: in one piece when small, else streamed.

    ``prefix`` is what was already read of it; ``tag`` a transaction tag to
    take out of a JSON answer.
    """
    if tag is not None and not _is_json(upstream):
        tag = None
    if request.method == "HEAD" or upstream.status in _BODILESS:
        return await stream_back(request, upstream, prefix=prefix)
    if prefix is None:
        if upstream.content_length is not None and not _small(upstream.content_length):
            return await stream_back(request, upstream, tag=tag)
        head = bytearray()
        try:
            await _read_head(upstream, head)
        except TimeoutError as e:
            upstream.release()
            raise HomeserverUnavailable("The homeserver did not answer in time", status=504) from e
        except aiohttp.ClientError as e:
            # Nothing was sent yet: the client gets an honest error, not half an answer.
            upstream.release()
            log.warning("homeserver response broke off: %s", type(e).__name__)
            raise HomeserverUnavailable("The homeserver's answer broke off") from e
        prefix = bytes(head)
    if len(prefix) > _SMALL_BODY or not upstream.content.at_eof():
        return await stream_back(request, upstream, prefix=prefix, tag=tag)
    upstream.release()
    if tag is not None:
        prefix = prefix.replace(tag, b"")
    response = web.Response(
        status=upstream.status,
        reason=upstream.reason,
        headers=_response_headers(upstream.headers, _WHOLE_DROP),
        body=prefix,
    )
    if tag is not None and len(prefix) >= _COMPRESS_FROM and _accepts_compression(request):
        response.enable_compression()
    return response


def _accepts_compression(request: web.Request) -> bool:
    accepted = request.headers.get("Accept-Encoding", "").lower()
    return "gzip" in accepted or "deflate" in accepted


async def stream_back(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    prefix: bytes | None = None,
    *,
    tag: bytes | None = None,
) -> web.StreamResponse:
    """Stream the answer to the client; ``prefix`` is what was already read of it.

    ``tag`` is taken out on the way, across chunk boundaries.
    """
    async with upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(_response_headers(upstream.headers))
        add_cors_headers(response.headers)
        request_id = request.get(REQUEST_ID)
        if request_id is not None:
            response.headers[REQUEST_ID_HEADER] = request_id
        if tag is not None:
            response.headers.popall("Content-Length", None)
            if _accepts_compression(request):
                response.enable_compression()
        await response.prepare(request)
        untag = _Untag(tag) if tag is not None else None
        try:
            if prefix:
                await response.write(untag.feed(prefix) if untag else prefix)
            async for chunk in upstream.content.iter_chunked(_CHUNK):
                await response.write(untag.feed(chunk) if untag else chunk)
            if untag is not None:
                await response.write(untag.rest())
        except (aiohttp.ClientError, TimeoutError) as e:
            # Headers are gone already: the only honest signal left is to cut
            # the connection, so the client sees a truncated answer as one.
            log.warning("homeserver response broke off: %s", type(e).__name__)
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write_eof()
    return response


class _Untag:
    """Takes every occurrence of ``tag`` out of a stream, chunk by chunk."""

    def __init__(self, tag: bytes) -> None:
        self._tag = tag
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        text = (self._held + chunk).replace(self._tag, b"")
        # The end may be the start of a tag that the next chunk completes.
        keep = len(self._tag) - 1
        if len(text) <= keep:
            self._held = text
            return b""
        self._held = text[-keep:]
        return text[:-keep]

    def rest(self) -> bytes:
        held, self._held = self._held, b""
        return held
