"""Typed keys for the state the application and each request carry."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from bridge.auth.cache import CachedAuthenticator
from bridge.auth.identity import Identity
from bridge.auth.logout_moments import LogoutMoments
from bridge.auth.reset_approvals import CrossSigningResetApprovals
from bridge.config import BridgeConfig, WellKnownConfig
from bridge.forward.forwarder import Forwarder
from bridge.homeserver.appservice import AppserviceClient
from bridge.homeserver.provisioning import Provisioning
from bridge.homeserver.strategy import IdentityStrategy
from bridge.issuer.http import IssuerHTTP
from bridge.issuer.jwks import SigningKeys
from bridge.issuer.metadata import IssuerMetadata
from bridge.login.service import LoginLayer
from bridge.ops.metrics import Metrics
from bridge.runtime.clock import Clock
from bridge.store import Store


@dataclass
class LiveSettings:
    """The settings a reload (SIGHUP, :mod:`bridge.runtime.reload`) may change while serving,
    read by the handlers on each request (``app[CONFIG]`` stays as started)."""

    well_known: WellKnownConfig
    admin_api_allowlist: tuple[str, ...]

    @classmethod
    def from_config(cls, config: BridgeConfig) -> LiveSettings:
        return cls(config.well_known, config.homeserver.admin_api_allowlist)


CONFIG = web.AppKey("config", BridgeConfig)
LIVE = web.AppKey("live", LiveSettings)
METRICS = web.AppKey("metrics", Metrics)
# What everything that expires reads the time from (bridge.runtime.clock).
CLOCK = web.AppKey("clock", Clock)
ISSUER_METADATA = web.AppKey("issuer_metadata", IssuerMetadata)
AUTHENTICATOR = web.AppKey("authenticator", CachedAuthenticator)
FORWARDER = web.AppKey("forwarder", Forwarder)
STORE = web.AppKey("store", Store)
# Cross-signing resets MAS approved (allow_cross_signing_reset), consumed by the upload.
RESET_APPROVALS = web.AppKey("reset_approvals", CrossSigningResetApprovals)
# MAS's provisioning API, only with issuer.kind: mas.
PROVISIONING = web.AppKey("provisioning", Provisioning)
# Every call to the issuer: its pooled session, the bound on calls in flight, metrics.
ISSUER_HTTP = web.AppKey("issuer_http", IssuerHTTP)
# The issuer's JWKS: with JWT access tokens or the login layer (its ID and logout tokens).
SIGNING_KEYS = web.AppKey("signing_keys", SigningKeys)
STRATEGY = web.AppKey("strategy", IdentityStrategy)
APPSERVICE = web.AppKey("appservice", AppserviceClient)
# Logout moments (always there; empty unless the login layer records some).
LOGOUT_MOMENTS = web.AppKey("logout_moments", LogoutMoments)
# The legacy login layer, only with a login section (issuer.kind: oidc).
LOGIN = web.AppKey("login", LoginLayer)

# The routing path (bridge.http.paths.routing_path), set by the first routing middleware.
PATH: web.RequestKey[str] = web.RequestKey("path")
# The route group of the request (bridge.ops.metrics.ROUTE_GROUPS), set by the front middleware.
ROUTE_GROUP: web.RequestKey[str] = web.RequestKey("route_group")
# Set by the auth middleware on every forwarded route: None for an anonymous
# request to a public endpoint.
IDENTITY: web.RequestKey[Identity | None] = web.RequestKey("identity")
