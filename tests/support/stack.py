"""The bridge's configuration for the real test peers (Synapse + oidc-provider)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from pathlib import Path

import yaml
from cryptography.fernet import Fernet

from bridge.config import AppserviceConfig, BridgeConfig, Strategy, parse_config
from bridge.homeserver.registration import registration
from tests.support.issuer import TestIssuer

SERVER_NAME = "bridge.test"
# The second, test-only appservice that hands out plain user tokens (see below).
PLAIN_LOGIN_APPSERVICE_ID = "test-plain-login"


def new_appservice(
    id: str = "matrix-oidc-bridge", sender_localpart: str = "oidc-bridge"
) -> AppserviceConfig:
    """Fresh random appservice tokens."""
    return AppserviceConfig(
        as_token=secrets.token_urlsafe(32),
        hs_token=secrets.token_urlsafe(32),
        id=id,
        sender_localpart=sender_localpart,
    )


def write_registration(
    appservice: AppserviceConfig, path: Path, *, strategy: Strategy = "masquerade"
) -> Path:
    """Write the bridge's appservice registration (for ``strategy``) where the homeserver
    will load it."""
    document = registration(appservice, SERVER_NAME, strategy=strategy)
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def store_section(path: Path) -> dict[str, object]:
    """A SQLite store at ``path`` with a fresh key (what device_login needs)."""
    return {
        "kind": "sqlite",
        "path": str(path),
        "encryption_keys": [Fernet.generate_key().decode()],
    }


def new_plain_login_appservice() -> AppserviceConfig:
    """Fresh random tokens for the test-only appservice that mints plain user tokens."""
    return AppserviceConfig(
        as_token=secrets.token_urlsafe(32),
        hs_token=secrets.token_urlsafe(32),
        id=PLAIN_LOGIN_APPSERVICE_ID,
        sender_localpart="test-plain-login",
    )


def plain_login_registration(appservice: AppserviceConfig, server_name: str) -> dict[str, object]:
    """A second registration, for tests only: same non-exclusive user namespace as the
    bridge's, but without ``io.element.msc4190``, so Synapse allows
    ``m.login.application_service`` logins through it. Such a login returns an ordinary
    device access token: requests made with it are not appservice requests, which is what
    the differential tests compare the bridge against.
    """
    return {
        "id": appservice.id,
        "url": None,
        "as_token": appservice.as_token,
        "hs_token": appservice.hs_token,
        "sender_localpart": appservice.sender_localpart,
        "rate_limited": False,
        "namespaces": {
            "users": [{"exclusive": False, "regex": f"^@[^:]+:{re.escape(server_name)}$"}],
            "aliases": [],
            "rooms": [],
        },
    }


def write_plain_login_registration(appservice: AppserviceConfig, path: Path) -> Path:
    """Write the test-only plain-login registration where Synapse will load it."""
    document = plain_login_registration(appservice, SERVER_NAME)
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def bridge_config_document(
    *,
    issuer: TestIssuer,
    homeserver_url: str,
    appservice: AppserviceConfig,
    public_baseurl: str = "http://127.0.0.1:8008/",
    strategy: Strategy = "masquerade",
    store_path: Path | None = None,
    issuer_settings: Mapping[str, object] | None = None,
    **extra: object,
) -> dict[str, object]:
    """The YAML document (as a dict) a test or the demo feeds to the bridge.

    ``device_login`` needs ``store_path`` (a SQLite file) unless ``extra`` has a store.
    ``issuer_settings`` are merged into the issuer section (``validation``, ``jwt``, ...).
    """
    if store_path is not None:
        extra = {"store": store_section(store_path), **extra}
    return {
        "server_name": SERVER_NAME,
        "public_baseurl": public_baseurl,
        "homeserver": {"url": homeserver_url, "strategy": strategy},
        "appservice": {
            "id": appservice.id,
            "as_token": appservice.as_token,
            "hs_token": appservice.hs_token,
            "sender_localpart": appservice.sender_localpart,
        },
        "issuer": {
            "issuer": issuer.url,
            "introspection": {
                "auth": "client_secret_basic",
                "client_id": issuer.bridge_client_id,
                "client_secret": issuer.bridge_client_secret,
            },
            **(issuer_settings or {}),
        },
        **extra,
    }


def bridge_config(
    *, issuer: TestIssuer, homeserver_url: str, appservice: AppserviceConfig, **extra: object
) -> BridgeConfig:
    """Parsed through the same validation as a config file."""
    return parse_config(
        bridge_config_document(
            issuer=issuer, homeserver_url=homeserver_url, appservice=appservice, **extra
        )
    )


def served_bridge_document(
    *,
    issuer: TestIssuer,
    homeserver_url: str,
    appservice: AppserviceConfig,
    port: int,
    **extra: object,
) -> dict[str, object]:
    """The config of a bridge that ``serve`` runs on 127.0.0.1:``port``."""
    return bridge_config_document(
        issuer=issuer,
        homeserver_url=homeserver_url,
        appservice=appservice,
        public_baseurl=f"http://127.0.0.1:{port}/",
        listen={"host": "127.0.0.1", "port": port},
        **{"ops": {"enabled": False}, **extra},  # type: ignore[arg-type]
    )
