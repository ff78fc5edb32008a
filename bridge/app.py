"""``create_app(config)``: wiring only."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from bridge import USER_AGENT
from bridge.auth.cache import CachedAuthenticator, cache_namespace
from bridge.auth.identity import Identity
from bridge.auth.jwt_access import JwtVerifier
from bridge.auth.logout_moments import LogoutMoments
from bridge.auth.middleware import MAX_HEADER_FIELD, authenticate, bearer_token
from bridge.auth.reset_approvals import CrossSigningResetApprovals
from bridge.auth.verifier import (
    ClaimRules,
    IntrospectionVerifier,
    JwtThenIntrospection,
    TokenVerifier,
)
from bridge.config import BridgeConfig
from bridge.errors import IssuerUnavailable, error_response
from bridge.forward.forwarder import LONG_POLL, AsSent, Forwarder
from bridge.homeserver.appservice import AppserviceClient
from bridge.homeserver.device_login import DeviceLogin
from bridge.homeserver.masquerade import Masquerade
from bridge.homeserver.probe import check_strategy
from bridge.homeserver.provisioning import Provisioning
from bridge.homeserver.strategy import IdentityStrategy
from bridge.http.cors import add_cors_headers
from bridge.http.paths import routing_path
from bridge.http.request_id import HEADER as REQUEST_ID_HEADER
from bridge.http.request_id import REQUEST_ID, RequestIDs
from bridge.issuer.http import IssuerHTTP
from bridge.issuer.http import client_auth as issuer_client_auth
from bridge.issuer.introspection import Introspector
from bridge.issuer.jwks import SigningKeys
from bridge.issuer.limit import InflightLimit
from bridge.issuer.metadata import IssuerMetadata
from bridge.issuer.oauth import OAuthClient
from bridge.login import backchannel, matrix, sso
from bridge.login.jwts import JwtChecks, SigningKeySource
from bridge.login.service import LoginLayer
from bridge.ops.metrics import Metrics, multiprocess_dir
from bridge.routes import client, discovery, mas_compat, provisioning, well_known
from bridge.routes.closed_doors import refuse
from bridge.runtime.background import running
from bridge.runtime.clock import SYSTEM_CLOCK, Clock
from bridge.state import (
    APPSERVICE,
    AUTHENTICATOR,
    CLOCK,
    CONFIG,
    FORWARDER,
    ISSUER_HTTP,
    ISSUER_METADATA,
    LIVE,
    LOGIN,
    LOGOUT_MOMENTS,
    METRICS,
    PATH,
    PROVISIONING,
    RESET_APPROVALS,
    ROUTE_GROUP,
    SIGNING_KEYS,
    STORE,
    STRATEGY,
    LiveSettings,
)
from bridge.store import open_store

log = logging.getLogger("bridge.app")


def _session(**kwargs: object) -> aiohttp.ClientSession:
    # No cookie jar: one pooled session serves every user.
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": USER_AGENT},
        **kwargs,  # type: ignore[arg-type]
    )


async def issuer_client(app: web.Application) -> AsyncIterator[None]:
    """Issuer session, discovery and JWKS (fetched now, refreshed in the background),
    the token verifier for ``issuer.validation``, and the token cache."""
    config = app[CONFIG]
    issuer = config.issuer
    metrics = app[METRICS]
    async with _session() as session:
        limit = InflightLimit(issuer.max_inflight)
        http = app[ISSUER_HTTP] = IssuerHTTP(session, limit, metrics, app[CLOCK], issuer.timeout)
        metadata = IssuerMetadata(http, issuer)
        try:
            await metadata.fetch()
        except IssuerUnavailable as e:
            log.warning("issuer metadata not loaded at start, retrying: %s", e.message)
        app[ISSUER_METADATA] = metadata
        rules = ClaimRules.from_config(config)
        refreshing = [metadata.refresh_forever()]
        verifier: TokenVerifier | None = None
        if issuer.introspection is not None and issuer.validation != "jwt":
            introspector = Introspector(http, metadata, issuer.introspection)
            verifier = IntrospectionVerifier(introspector, rules)
        if issuer.validation != "introspection" or config.login is not None:
            # JWT access tokens, and the login layer's ID and logout tokens.
            keys = app[SIGNING_KEYS] = SigningKeys(
                http, metadata, issuer, max_unknown=config.token_cache.negative_max_size
            )
            if metadata.current is not None:
                with contextlib.suppress(IssuerUnavailable):  # logged; retried
                    await keys.fetch()
            refreshing.append(keys.refresh_forever())
        if issuer.validation != "introspection":
            jwt_verifier = JwtVerifier(app[SIGNING_KEYS], metadata, config, rules)
            verifier = (
                jwt_verifier if verifier is None else JwtThenIntrospection(jwt_verifier, verifier)
            )
        assert verifier is not None  # the config requires introspection where it is needed
        namespace = cache_namespace(issuer.validation, issuer.issuer)
        authenticator = app[AUTHENTICATOR] = CachedAuthenticator(
            verifier, config.token_cache, metrics, clock=app[CLOCK], namespace=namespace
        )
        if issuer.validation != "introspection":
            app[SIGNING_KEYS].on_unpublished = lambda kids: _forget_sessions(authenticator, kids)
        async with running(*refreshing):
            yield


# Seconds between samples of the gauges read from live state (cache sizes) with several
# workers: a scrape reaches one worker, which cannot ask the others.
SAMPLE_INTERVAL = 1.0


async def sample_metrics(app: web.Application) -> AsyncIterator[None]:
    """With several workers, keep this worker's sampled gauges fresh in the shared files."""

    async def sample_forever() -> None:
        while True:
            app[METRICS].sample()
            await asyncio.sleep(SAMPLE_INTERVAL)

    async with running(*([sample_forever()] if multiprocess_dir() is not None else [])):
        yield


async def probe_homeserver(app: web.Application) -> AsyncIterator[None]:
    """Refuse to start when the configured strategy cannot work with the homeserver
    (before anything else is opened, so nothing is left behind)."""
    config = app[CONFIG]
    if config.homeserver.probe_at_start:
        async with _session() as session:
            await check_strategy(session, config)
    yield


async def store(app: web.Application) -> AsyncIterator[None]:
    """The durable store, when the config has one (``device_login`` needs it)."""
    config = app[CONFIG]
    if config.store is None:
        yield
        return
    opened = await open_store(config.store)
    app[STORE] = opened
    yield
    await opened.close()


async def homeserver_client(app: web.Application) -> AsyncIterator[None]:
    """The one pooled homeserver session, the identity strategy and the forwarder."""
    config = app[CONFIG]
    homeserver = config.homeserver

    def pooled(size: int) -> aiohttp.ClientSession:
        # Bodies pass through as the homeserver encoded them; nothing is added
        # that the client did not send itself (the bridge's own calls name
        # themselves: bridge.homeserver.appservice.call_json).
        return aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            request_class=AsSent,
            connector=aiohttp.TCPConnector(limit=size, ttl_dns_cache=300),
        )

    # Long polls hold their connections: a pool of their own, so that they
    # never leave ordinary requests waiting for one.
    async with (
        pooled(homeserver.pool_size) as session,
        pooled(homeserver.long_poll_pool_size) as long_poll_session,
    ):
        appservice = AppserviceClient(session, config, app[METRICS])
        strategy: IdentityStrategy
        if config.homeserver.strategy == "device_login":
            strategy = DeviceLogin(appservice, app[STORE], config)
        else:
            strategy = Masquerade(appservice, config)
        # Derived, so operators have one secret fewer to manage.
        txn_key = hmac.new(
            config.appservice.as_token.encode(), b"matrix-oidc-bridge txnId", hashlib.sha256
        ).digest()
        app[FORWARDER] = Forwarder(
            session,
            config,
            strategy,
            txn_key,
            long_poll_session=long_poll_session,
            metrics=app[METRICS],
            logged_out=app[LOGOUT_MOMENTS].covers,
            revalidate=functools.partial(_revalidate, app),
        )
        app[STRATEGY] = strategy
        app[APPSERVICE] = appservice
        if config.issuer.kind == "mas":
            app[PROVISIONING] = Provisioning(
                appservice, strategy, app[AUTHENTICATOR], app[RESET_APPROVALS], config
            )
        yield


# How often expired login secrets, logout token IDs and old moments are dropped.
_SWEEP_INTERVAL = 60.0


def signing_keys(app: web.Application) -> SigningKeySource:
    """The issuer's JWKS (:class:`bridge.issuer.jwks.SigningKeys`), for ID and logout
    tokens: always there with a login section."""
    return app[SIGNING_KEYS]


async def login_layer(app: web.Application) -> AsyncIterator[None]:
    """The legacy login layer (with a ``login`` section): its OAuth client, the logout
    moments read from the store and then followed, and the store's sweeping."""
    config = app[CONFIG]
    if config.login is None:
        yield
        return
    store = app[STORE]
    moments = app[LOGOUT_MOMENTS]
    client_id, client_secret, client_auth = config.login.client(config.issuer.introspection)
    auth = issuer_client_auth(client_auth, client_id, client_secret)
    oauth = OAuthClient(app[ISSUER_HTTP], app[ISSUER_METADATA], client_id=client_id, auth=auth)
    jwts = JwtChecks(
        issuer=config.issuer.issuer,
        client_id=client_id,
        algorithms=config.login.signing_algorithms,
        keys=signing_keys(app),
        leeway=config.issuer.leeway,
    )
    app[LOGIN] = LoginLayer(
        config=config,
        oauth=oauth,
        jwts=jwts,
        store=store,
        authenticator=app[AUTHENTICATOR],
        moments=moments,
        strategy=app[STRATEGY],
        appservice=app[APPSERVICE],
        clock=app[CLOCK],
    )
    # Before the first request: every moment already recorded.
    moments.apply(await store.logout_moments_since(0))
    retention = config.login.logout_retention

    async def sweep_forever() -> None:
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL)
            now = int(time.time())
            try:
                await store.sweep(now, int(now - retention))
            except Exception as e:  # the next sweep tries again
                log.warning("sweeping the store failed: %s", type(e).__name__)
            moments.prune(int(now - retention))

    async with running(
        store.follow_logout_moments(moments.apply, interval=config.login.sync_interval),
        sweep_forever(),
    ):
        yield


async def _revalidate(app: web.Application, request: web.Request) -> Identity | None:
    """The issuer asked again about the request's token (the forwarder, before it heals)."""
    token = bearer_token(request)
    return None if token is None else await app[AUTHENTICATOR].revalidate(token)


def _forget_sessions(authenticator: CachedAuthenticator, kids: set[str | None]) -> None:
    """The issuer no longer publishes some keys (or publishes other material under
    their kid): the sessions they verified are validated again, so that a retired key
    stops working at once, not when entries expire. Sessions of other keys, and
    those the issuer vouched for by introspection, are kept."""
    names = {kid or "" for kid in kids}
    dropped = authenticator.cache.forget_signed_by(names)
    log.info(
        "issuer keys %s are no longer published; %d cached session(s) dropped",
        sorted(names),
        dropped,
    )


def _drop_cached_sessions(app: web.Application, user_id: str, device_id: str | None) -> None:
    """A logout moment was applied: its sessions leave the token cache at once."""
    authenticator = app.get(AUTHENTICATOR)
    if authenticator is None:
        return
    if device_id is None:
        authenticator.forget_user(user_id)
    else:
        authenticator.forget_device(user_id, device_id)


# Route name prefix → route group (bridge.ops.metrics.ROUTE_GROUPS); forwarded routes
# are named forward:<group>.
_GROUP_OF_PREFIX = {
    "well_known": "well_known",
    "discovery": "discovery",
    "compat": "compat",
    "login": "login",
    "mas": "provisioning",
}


def route_group(name: str | None) -> str:
    """The route group of a route name (``other`` for an unnamed or unknown one)."""
    prefix, _, rest = (name or "").partition(":")
    if prefix == "forward":
        return rest if rest in ("client", "media", "admin") else "other"
    return _GROUP_OF_PREFIX.get(prefix, "other")


def front_middleware(metrics: Metrics, ids: RequestIDs) -> Middleware:
    """The one middleware (each layer costs); see :func:`front`'s steps."""
    groups: dict[str | None, str] = {}
    request_done = metrics.request_done
    clock = time.perf_counter

    @web.middleware
    async def front(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every request's concerns, in order, in one layer:

        0. its request ID (kept from the client when well-formed), its route group,
           and the request metrics around everything below;
        1. the one routing path (:mod:`bridge.http.paths`), refusing any path a homeserver
           could read differently; every decision below is taken on it;
        2. CORS preflight: 204, without a token or the homeserver;
        3. closed doors, appservice-only endpoints, the admin allow-list
           (:mod:`bridge.routes.closed_doors`);
        4. the token, on forwarded routes (:mod:`bridge.auth.middleware`);
        5. the route's handler;

        and any failure as Matrix JSON (:func:`bridge.errors.error_response`); every
        answer with CORS headers (:mod:`bridge.http.cors`) and its request ID, set
        here rather than by an ``on_response_prepare`` signal, whose dispatch costs
        more than the headers.
        """
        start = clock()
        request_id = request[REQUEST_ID] = ids.for_request(request.headers.get(REQUEST_ID_HEADER))
        name = request.match_info.route.name
        group = groups.get(name)
        if group is None:
            group = groups[name] = route_group(name)
        request[ROUTE_GROUP] = group
        status = 499  # a client that went away (cancelled) unless answered
        metrics.answering += 1
        try:
            try:
                path = request[PATH] = routing_path(request.raw_path)
                if group == "client" and LONG_POLL.match(path):
                    group = request[ROUTE_GROUP] = "sync"
                if request.method == "OPTIONS":
                    response: web.StreamResponse = web.Response(status=204)
                else:
                    await refuse(request, path)
                    await authenticate(request)
                    response = await handler(request)
            except Exception as e:
                response = error_response(request, e)
            if not response.prepared:  # a streamed answer got them before it was
                add_cors_headers(response.headers)
                response.headers[REQUEST_ID_HEADER] = request_id
            status = response.status
            return response
        finally:
            metrics.answering -= 1
            request_done(group, request.method, status, clock() - start)

    return front


def create_app(
    config: BridgeConfig, metrics: Metrics | None = None, *, clock: Clock = SYSTEM_CLOCK
) -> web.Application:
    """The client-facing application for ``config`` (``metrics``: a fresh set unless
    given; ``clock``: what everything that expires reads the time from)."""
    metrics = metrics if metrics is not None else Metrics()
    # A header field and the request line up to MAX_HEADER_FIELD are read, so that an
    # absurd token (in the header or the query) gets a Matrix 401 from the auth
    # middleware rather than a bare 400 from the parser.
    app = web.Application(
        middlewares=[front_middleware(metrics, RequestIDs())],
        handler_args={"max_field_size": MAX_HEADER_FIELD, "max_line_size": MAX_HEADER_FIELD},
    )
    app[CONFIG] = config
    app[METRICS] = metrics
    app[CLOCK] = clock
    app[LIVE] = LiveSettings.from_config(config)
    app[RESET_APPROVALS] = CrossSigningResetApprovals()
    app[LOGOUT_MOMENTS] = LogoutMoments(
        clock, on_logout=lambda user_id, device_id: _drop_cached_sessions(app, user_id, device_id)
    )
    app.cleanup_ctx.append(probe_homeserver)
    app.cleanup_ctx.append(issuer_client)
    app.cleanup_ctx.append(store)
    app.cleanup_ctx.append(homeserver_client)
    app.cleanup_ctx.append(login_layer)
    app.cleanup_ctx.append(sample_metrics)
    well_known.add_routes(app)
    discovery.add_routes(app)
    if config.issuer.kind == "mas":
        # Authenticated by MAS's shared secret, not by the client auth middleware.
        provisioning.add_routes(app)
        # Legacy login, logout and refresh: MAS's compatibility layer.
        mas_compat.add_routes(app)
    elif config.login is not None:
        # Legacy login, logout and refresh, and back-channel logout: the bridge's own.
        matrix.add_routes(app)
        sso.add_routes(app)
        backchannel.add_routes(app)
    client.add_routes(app)
    return app
