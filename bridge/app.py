"""``create_app(config)``: wiring only."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler

from bridge import USER_AGENT
from bridge.auth.cache import CachedAuthenticator, cache_namespace
from bridge.auth.jwt_access import JwtVerifier
from bridge.auth.middleware import MAX_HEADER_FIELD, authenticate
from bridge.auth.reset_approvals import CrossSigningResetApprovals
from bridge.auth.verifier import (
    ClaimRules,
    IntrospectionVerifier,
    JwtThenIntrospection,
    TokenVerifier,
)
from bridge.config import BridgeConfig
from bridge.errors import IssuerUnavailable, error_response
from bridge.homeserver.appservice import AppserviceClient
from bridge.homeserver.device_login import DeviceLogin
from bridge.homeserver.masquerade import Masquerade
from bridge.homeserver.probe import check_strategy
from bridge.homeserver.provisioning import Provisioning
from bridge.homeserver.strategy import IdentityStrategy
from bridge.issuer.introspection import Introspector
from bridge.issuer.jwks import SigningKeys
from bridge.issuer.limit import InflightLimit
from bridge.issuer.metadata import IssuerMetadata
from bridge.paths import routing_path
from bridge.proxy import Forwarder
from bridge.routes import client, compat, discovery, mas_api, well_known
from bridge.routes.cors import add_cors_headers
from bridge.routes.refused import refuse
from bridge.state import (
    AUTHENTICATOR,
    CONFIG,
    FORWARDER,
    ISSUER_METADATA,
    PATH,
    PROVISIONING,
    RESET_APPROVALS,
    STORE,
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
    async with _session() as session:
        metadata = IssuerMetadata(session, issuer)
        try:
            await metadata.fetch()
        except IssuerUnavailable as e:
            log.warning("issuer metadata not loaded at start, retrying: %s", e.message)
        app[ISSUER_METADATA] = metadata
        limit = InflightLimit(issuer.max_inflight)
        rules = ClaimRules.from_config(config)
        refreshing = [metadata.refresh_forever()]
        verifier: TokenVerifier | None = None
        if issuer.introspection is not None and issuer.validation != "jwt":
            introspector = Introspector(session, metadata, issuer.introspection, limit)
            verifier = IntrospectionVerifier(introspector, rules)
        if issuer.validation != "introspection":
            keys = SigningKeys(
                session, metadata, issuer, limit, max_unknown=config.token_cache.negative_max_size
            )
            if metadata.current is not None:
                with contextlib.suppress(IssuerUnavailable):  # logged; retried
                    await keys.fetch()
            refreshing.append(keys.refresh_forever())
            jwt_verifier = JwtVerifier(keys, metadata, config, rules)
            verifier = (
                jwt_verifier if verifier is None else JwtThenIntrospection(jwt_verifier, verifier)
            )
        assert verifier is not None  # the config requires introspection where it is needed
        namespace = cache_namespace(issuer.validation, issuer.issuer)
        app[AUTHENTICATOR] = CachedAuthenticator(verifier, config.token_cache, namespace=namespace)
        tasks = [asyncio.create_task(refresh) for refresh in refreshing]
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


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
            skip_auto_headers=("Accept", "Accept-Encoding", "Content-Type", "User-Agent"),
            connector=aiohttp.TCPConnector(limit=size, ttl_dns_cache=300),
        )

    # Long polls hold their connections: a pool of their own, so that they
    # never leave ordinary requests waiting for one.
    async with (
        pooled(homeserver.pool_size) as session,
        pooled(homeserver.long_poll_pool_size) as long_poll_session,
    ):
        appservice = AppserviceClient(session, config)
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
            session, config, strategy, txn_key, long_poll_session=long_poll_session
        )
        if config.issuer.kind == "mas":
            app[PROVISIONING] = Provisioning(
                appservice, strategy, app[AUTHENTICATOR], app[RESET_APPROVALS], config
            )
        yield


@web.middleware
async def front(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request's concerns, in order, in one layer (each layer costs):

    1. the one routing path (:mod:`bridge.paths`), refusing any path a homeserver
       could read differently; every decision below is taken on it;
    2. CORS preflight: 204, without a token or the homeserver;
    3. closed doors, appservice-only endpoints, the admin allow-list
       (:mod:`bridge.routes.refused`);
    4. the token, on forwarded routes (:mod:`bridge.auth.middleware`);
    5. the route's handler;

    and any failure as Matrix JSON (:func:`bridge.errors.error_response`).
    """
    try:
        path = request[PATH] = routing_path(request.raw_path)
        if request.method == "OPTIONS":
            return web.Response(status=204)
        await refuse(request, path)
        await authenticate(request)
        return await handler(request)
    except Exception as e:
        return error_response(request, e)


def create_app(config: BridgeConfig) -> web.Application:
    """The client-facing application for ``config``."""
    # A header field up to MAX_HEADER_FIELD is read, so that an absurd token gets a
    # Matrix 401 from the auth middleware rather than a bare 400 from the parser.
    app = web.Application(middlewares=[front], handler_args={"max_field_size": MAX_HEADER_FIELD})
    app[CONFIG] = config
    app[RESET_APPROVALS] = CrossSigningResetApprovals()
    app.cleanup_ctx.append(probe_homeserver)
    app.cleanup_ctx.append(issuer_client)
    app.cleanup_ctx.append(store)
    app.cleanup_ctx.append(homeserver_client)
    app.on_response_prepare.append(add_cors_headers)
    well_known.add_routes(app)
    discovery.add_routes(app)
    if config.issuer.kind == "mas":
        # Authenticated by MAS's shared secret, not by the client auth middleware.
        mas_api.add_routes(app)
        # Legacy login, logout and refresh: MAS's compatibility layer.
        compat.add_routes(app)
    client.add_routes(app)
    return app
