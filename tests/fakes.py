"""Fault-injecting fakes: a small issuer and a small homeserver, each a real web.Application.

They are served with pytest-aiohttp's ``aiohttp_server`` and programmed per test:

- :class:`FakeIssuer` serves a discovery document, an introspection endpoint and a JWKS.
  Tokens it knows (``issuer.tokens``) introspect as active with their claims, any other
  as ``{"active": false}``; ``issuer.fault`` replaces every introspection answer
  (status, body, delay), ``issuer.jwks_fault`` every JWKS answer. Every introspection
  request is recorded (headers and form), JWKS requests counted. ``issuer.sign()``
  makes JWT access tokens with its keys (:class:`SigningKey`, RS256 and ES256 at
  first; ``issuer.rotate()`` adds one and signs with it from then on).
- :class:`FakeHomeserver` records every request (method, raw path, query, headers, body),
  answers the appservice's ``POST /register`` and ``PUT /devices/{id}`` itself, and
  answers everything else with ``homeserver.answer``.

``bridge_config()`` builds a :class:`BridgeConfig` pointing at both; ``start_bridge()``
serves ``create_app(config)`` and returns a test client for it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from multidict import CIMultiDict, MultiDict
from pytest_aiohttp import AiohttpClient, AiohttpServer

from bridge.app import create_app
from bridge.config import BridgeConfig, parse_config
from bridge.runtime.clock import SYSTEM_CLOCK, Clock

SERVER_NAME = "example.test"
PUBLIC_BASEURL = "https://matrix.example.test/"
AS_TOKEN = "as-token-0123456789"
HS_TOKEN = "hs-token-9876543210"
CLIENT_ID = "bridge"
CLIENT_SECRET = "bridge-secret"
# Fake homeserver bodies (5 MB uploads) exceed aiohttp's 1 MB default.
_MAX_BODY = 64 * 1024 * 1024

BridgeClient = TestClient[web.Request, web.Application]
Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


def free_port() -> int:
    """A local TCP port that nothing listens on (for "peer is down" tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def active_claims(
    username: str = "alice", device_id: str = "DEVA", **extra: object
) -> dict[str, object]:
    """Introspection claims of a valid client-API access token for ``username``/``device_id``."""
    return {
        "active": True,
        "scope": f"urn:matrix:client:api:* urn:matrix:client:device:{device_id}",
        "username": username,
        "token_type": "Bearer",
        "exp": int(time.time()) + 3600,
        **extra,
    }


# ---------------------------------------------------------------------------------------
# Issuer


@dataclass(frozen=True)
class Fault:
    """One programmed introspection answer: raw body bytes, status, and a delay before it."""

    status: int = 200
    body: bytes = b"{}"
    content_type: str = "application/json"
    delay: float = 0.0
    headers: Mapping[str, str] | None = None

    @classmethod
    def json(
        cls,
        document: object,
        *,
        status: int = 200,
        delay: float = 0.0,
        headers: Mapping[str, str] | None = None,
    ) -> Fault:
        return cls(status=status, body=json.dumps(document).encode(), delay=delay, headers=headers)


@dataclass(frozen=True)
class IntrospectionRequest:
    """What the issuer got on its introspection endpoint."""

    headers: CIMultiDict[str]
    form: MultiDict[str]


@functools.cache
def _private_key(kind: str, n: int) -> Any:
    """The ``n``-th private key of a kind, made once per test session (RSA is slow)."""
    if kind == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "P-256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "P-384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


_KIND = {"RS256": "RSA", "PS256": "RSA", "ES256": "P-256", "ES384": "P-384", "EdDSA": "Ed25519"}


@dataclass
class SigningKey:
    """One of the fake issuer's keys: ``jwk`` is what its JWKS publishes."""

    kid: str
    alg: str
    private: Any
    jwk: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def make(cls, alg: str, kid: str, n: int = 0, *, publish_alg: bool = True) -> SigningKey:
        kind = _KIND[alg]
        private = _private_key(kind, n)
        exporter = {"RSA": RSAAlgorithm, "Ed25519": OKPAlgorithm}.get(kind, ECAlgorithm)
        public = exporter.to_jwk(private.public_key(), as_dict=True)
        public.update({"kid": kid, "use": "sig", **({"alg": alg} if publish_alg else {})})
        return cls(kid, alg, private, public)


class FakeIssuer:
    """Discovery at ``/.well-known/openid-configuration``; introspection at
    ``/oauth2/introspect``; the JWKS at ``/oauth2/keys``.

    ``url`` is the issuer identifier, with its trailing slash.
    """

    def __init__(self) -> None:
        self.url = ""  # "http://127.0.0.1:<port>/", set by start()
        self.tokens: dict[str, Mapping[str, object]] = {}
        self.fault: Fault | None = None
        # None: the document names this issuer's own URL.
        self.discovery_issuer: str | None = None
        self.discovery_extra: dict[str, object] = {}
        self.discovery_requests = 0
        self.discovery_delay = 0.0
        # Discovery requests answered before the rest get 503 (None: all answered).
        self.discovery_answers: int | None = None
        self.introspections: list[IntrospectionRequest] = []
        # Introspections being answered now, and the most ever at once.
        self.introspecting = 0
        self.max_introspecting = 0
        self.introspection_delay = 0.0
        self.keys: list[SigningKey] = [
            SigningKey.make("RS256", "rs-1"),
            SigningKey.make("ES256", "es-1"),
        ]
        self.jwks_fault: Fault | None = None
        self.jwks_requests = 0
        self.jwks_delay = 0.0

    @classmethod
    async def start(cls, aiohttp_server: AiohttpServer) -> FakeIssuer:
        issuer = cls()
        server = await aiohttp_server(issuer.app())
        issuer.url = str(server.make_url("/"))
        return issuer

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_post("/oauth2/introspect", self._introspect)
        app.router.add_get("/oauth2/keys", self._jwks)
        return app

    @property
    def introspection_endpoint(self) -> str:
        return self.url + "oauth2/introspect"

    def discovery_document(self) -> dict[str, object]:
        return {
            "issuer": self.url if self.discovery_issuer is None else self.discovery_issuer,
            "authorization_endpoint": self.url + "oauth2/authorize",
            "token_endpoint": self.url + "oauth2/token",
            "introspection_endpoint": self.introspection_endpoint,
            "jwks_uri": self.url + "oauth2/keys",
            "response_types_supported": ["code"],
            **self.discovery_extra,
        }

    # -- JWT access tokens ----------------------------------------------------------

    def key(self, alg: str = "RS256") -> SigningKey:
        """The newest published key for ``alg``."""
        return next(k for k in self.keys if k.alg == alg)

    def rotate(self, alg: str = "RS256", *, n: int = 1) -> SigningKey:
        """Publish a new key for ``alg`` in front of the others, and sign with it."""
        key = SigningKey.make(alg, f"{alg.lower()}-{secrets.token_hex(4)}", n)
        self.keys.insert(0, key)
        return key

    def access_claims(
        self,
        username: str = "alice",
        device_id: str | None = "DEVA",
        *,
        audience: object = PUBLIC_BASEURL,
        lifetime: float = 3600,
        **extra: object,
    ) -> dict[str, Any]:
        """RFC 9068 claims of a valid client-API access token from this issuer."""
        now = int(time.time())
        device = f" urn:matrix:client:device:{device_id}" if device_id else ""
        claims: dict[str, Any] = {
            "iss": self.url,
            "sub": username,
            "aud": audience,
            "exp": int(now + lifetime),
            "iat": now,
            "jti": secrets.token_hex(8),
            "client_id": "element",
            "scope": f"openid urn:matrix:client:api:*{device}",
            "username": username,
            **extra,
        }
        return {k: v for k, v in claims.items() if v is not None}

    def sign(
        self,
        claims: Mapping[str, Any] | None = None,
        *,
        alg: str = "RS256",
        key: SigningKey | None = None,
        typ: str | None = "at+jwt",
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """A JWT of ``claims`` (default :meth:`access_claims`) signed with ``key`` (default
        the newest for ``alg``), with ``typ`` and its ``kid`` in the header."""
        key = key or self.key(alg)
        header = {"kid": key.kid, "typ": typ, **(headers or {})}
        payload = dict(claims if claims is not None else self.access_claims())
        return jwt.encode(payload, key.private, algorithm=key.alg, headers=header)

    def jwks(self) -> dict[str, object]:
        return {"keys": [k.jwk for k in self.keys]}

    # -- handlers -------------------------------------------------------------------

    async def _discovery(self, _request: web.Request) -> web.Response:
        self.discovery_requests += 1
        await asyncio.sleep(self.discovery_delay)
        if self.discovery_answers is not None and self.discovery_requests > self.discovery_answers:
            return web.json_response({"error": "temporarily_unavailable"}, status=503)
        return web.json_response(self.discovery_document())

    async def _jwks(self, _request: web.Request) -> web.Response:
        self.jwks_requests += 1
        await asyncio.sleep(self.jwks_delay)
        if self.jwks_fault is not None:
            await asyncio.sleep(self.jwks_fault.delay)
            return web.Response(
                status=self.jwks_fault.status,
                body=self.jwks_fault.body,
                content_type=self.jwks_fault.content_type,
                headers=self.jwks_fault.headers,
            )
        return web.json_response(self.jwks())

    async def _introspect(self, request: web.Request) -> web.Response:
        self.introspecting += 1
        self.max_introspecting = max(self.max_introspecting, self.introspecting)
        try:
            return await self._introspection_answer(request)
        finally:
            self.introspecting -= 1

    async def _introspection_answer(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.introspections.append(
            IntrospectionRequest(
                headers=CIMultiDict(request.headers),
                form=MultiDict((k, v) for k, v in form.items() if isinstance(v, str)),
            )
        )
        await asyncio.sleep(self.introspection_delay)
        if self.fault is not None:
            await asyncio.sleep(self.fault.delay)
            return web.Response(
                status=self.fault.status,
                body=self.fault.body,
                content_type=self.fault.content_type,
                headers=self.fault.headers,
            )
        token = form.get("token")
        claims = self.tokens.get(token) if isinstance(token, str) else None
        return web.json_response(dict(claims) if claims is not None else {"active": False})


# ---------------------------------------------------------------------------------------
# Homeserver


RequestKind = Literal["register", "device", "login", "logout", "client"]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the homeserver received it."""

    kind: RequestKind
    method: str
    raw_path: str
    query: MultiDict[str]
    headers: CIMultiDict[str]
    body: bytes


def json_answer(
    status: int = 200, document: object = None, headers: Mapping[str, str] | None = None
) -> Answer:
    """An answer with a JSON body (``{}`` by default)."""
    body = json.dumps({} if document is None else document).encode()

    async def answer(_request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=status, body=body, content_type="application/json", headers=headers
        )

    return answer


class FakeHomeserver:
    """Records what reaches the homeserver; provisioning calls answered, the rest programmable."""

    def __init__(self) -> None:
        self.url = ""  # "http://127.0.0.1:<port>", set by start()
        self.server: TestServer | None = None
        self.requests: list[RecordedRequest] = []
        self.answer: Answer = json_answer()
        # False: the answer reads the request body itself (recorded body is then b"").
        self.read_body = True
        self.register_delay = 0.0
        self.login_delay = 0.0
        # (status, errcode) for the next appservice logins, in turn; tokens after them.
        self.login_refusals: list[tuple[int, str]] = []
        self._devices: set[tuple[str, str]] = set()
        # Device tokens issued by appservice login: token -> (localpart, device_id).
        self.device_tokens: dict[str, tuple[str, str]] = {}

    @classmethod
    async def start(cls, aiohttp_server: AiohttpServer) -> FakeHomeserver:
        homeserver = cls()
        homeserver.server = await aiohttp_server(homeserver.app())
        homeserver.url = str(homeserver.server.make_url("")).rstrip("/")
        return homeserver

    def app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_post("/_matrix/client/v3/register", self._register)
        app.router.add_put("/_matrix/client/v3/devices/{device_id}", self._device)
        app.router.add_post("/_matrix/client/v3/login", self._login)
        app.router.add_post("/_matrix/client/v3/logout", self._logout)
        app.router.add_route("*", "/{tail:.*}", self._client)
        return app

    def of_kind(self, kind: RequestKind) -> list[RecordedRequest]:
        return [r for r in self.requests if r.kind == kind]

    @property
    def client_requests(self) -> list[RecordedRequest]:
        """Requests forwarded on a client's behalf (not the bridge's own provisioning)."""
        return self.of_kind("client")

    async def _record(self, kind: RequestKind, request: web.Request, *, body: bool = True) -> None:
        self.requests.append(
            RecordedRequest(
                kind=kind,
                method=request.method,
                raw_path=request.rel_url.raw_path,
                query=MultiDict(request.rel_url.query),
                headers=CIMultiDict(request.headers),
                body=await request.read() if body else b"",
            )
        )

    async def _register(self, request: web.Request) -> web.Response:
        await self._record("register", request)
        await asyncio.sleep(self.register_delay)
        username = (await request.json()).get("username")
        return web.json_response({"user_id": f"@{username}:{SERVER_NAME}"})

    async def _device(self, request: web.Request) -> web.Response:
        await self._record("device", request)
        key = (request.query.get("user_id", ""), request.match_info["device_id"])
        created = key not in self._devices
        self._devices.add(key)
        return web.json_response({}, status=201 if created else 200)

    async def _login(self, request: web.Request) -> web.StreamResponse:
        """Appservice login issues a device token; any other login is a client request."""
        body = await request.read()
        submission = json.loads(body or b"{}")
        if (
            request.headers.get("Authorization") != f"Bearer {AS_TOKEN}"
            or submission.get("type") != "m.login.application_service"
        ):
            return await self._client(request)
        await self._record("login", request)
        await asyncio.sleep(self.login_delay)
        if self.login_refusals:
            status, errcode = self.login_refusals.pop(0)
            return web.json_response({"errcode": errcode, "retry_after_ms": 10}, status=status)
        localpart = submission["identifier"]["user"]
        device_id = submission["device_id"]
        token = f"hs-{localpart}-{device_id}-{len(self.device_tokens)}"
        self.device_tokens[token] = (localpart, device_id)
        return web.json_response(
            {
                "user_id": f"@{localpart}:{SERVER_NAME}",
                "device_id": device_id,
                "access_token": token,
            }
        )

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.device_tokens:
            return await self._client(request)
        await self._record("logout", request)
        del self.device_tokens[token]
        return web.json_response({})

    async def _client(self, request: web.Request) -> web.StreamResponse:
        await self._record("client", request, body=self.read_body)
        return await self.answer(request)


# ---------------------------------------------------------------------------------------
# Bridge


def _merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, recursively; an override of None removes a key."""
    merged = dict(base)
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def bridge_config(
    issuer_url: str, homeserver_url: str, *overrides: Mapping[str, Any]
) -> BridgeConfig:
    """A config for a bridge between ``issuer_url`` and ``homeserver_url``.

    Each of ``overrides`` is merged in turn, recursively (None removes a key).
    """
    return parse_config(bridge_document(issuer_url, homeserver_url, *overrides))


def bridge_document(
    issuer_url: str, homeserver_url: str, *overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """The config document behind :func:`bridge_config` (for a config file)."""
    raw: dict[str, Any] = {
        "server_name": SERVER_NAME,
        "public_baseurl": PUBLIC_BASEURL,
        # The fake homeserver speaks the masquerade dialect and cannot be probed.
        "homeserver": {"url": homeserver_url, "strategy": "masquerade", "probe_at_start": False},
        "appservice": {"as_token": AS_TOKEN, "hs_token": HS_TOKEN},
        # A served bridge (``serve``) would bind 127.0.0.1:8010: tests that serve it
        # give it a free port.
        "ops": {"enabled": False},
        "issuer": {
            "issuer": issuer_url,
            "introspection": {
                "auth": "client_secret_basic",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            },
        },
    }
    for layer in overrides:
        raw = _merged(raw, layer)
    return raw


async def start_bridge(
    aiohttp_client: AiohttpClient,
    config: BridgeConfig,
    *,
    clock: Clock = SYSTEM_CLOCK,
    **client_kwargs: Any,
) -> BridgeClient:
    """Serve ``create_app(config, clock=clock)`` and return a client for it (its startup
    has run)."""
    return await aiohttp_client(create_app(config, clock=clock), **client_kwargs)
