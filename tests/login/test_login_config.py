"""The ``login`` section: defaults, and what it refuses, naming the key."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.fernet import Fernet

from bridge.config import parse_config
from bridge.errors import ConfigError
from tests.config.test_config import minimal

STORE = {"path": "bridge.db", "encryption_keys": [Fernet.generate_key().decode()]}


def with_login(login: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    return {**minimal(), "store": STORE, "login": login or {}, **top}


def error(document: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(document)
    return str(info.value)


def test_defaults_come_from_the_introspection_client() -> None:
    config = parse_config(with_login())
    assert config.login is not None
    assert config.login.client(config.issuer.introspection) == (
        "bridge",
        "client-secret",
        "client_secret_basic",
    )
    assert config.login.password_grant is False
    assert config.login.redirect_url_allowlist == ()
    assert config.login.login_token_ttl == 120.0
    assert config.login.logout_retention == 7 * 86400.0
    assert config.login.signing_algorithms == ("RS256", "PS256", "ES256", "EdDSA")


def test_a_client_of_its_own() -> None:
    config = parse_config(
        with_login(
            {"client_id": "login", "client_secret": "s", "client_auth": "client_secret_post"}
        )
    )
    assert config.login is not None
    assert config.login.client(config.issuer.introspection) == ("login", "s", "client_secret_post")


def test_without_the_section_nothing_changes() -> None:
    assert parse_config(minimal()).login is None


def test_login_needs_the_store() -> None:
    document = with_login()
    del document["store"]
    assert "login: needs the store section" in error(document)


def test_login_is_not_for_mas() -> None:
    document = with_login()
    document["issuer"]["kind"] = "mas"
    document["issuer"]["introspection"] = {"auth": "mas_shared_secret", "client_secret": "x"}
    assert "login: is only for issuer.kind: oidc" in error(document)


@pytest.mark.parametrize(
    ("login", "key"),
    [
        ({"signing_algorithms": ["HS256"]}, "login.signing_algorithms"),
        ({"signing_algorithms": ["none"]}, "login.signing_algorithms"),
        ({"redirect_url_allowlist": ["app.example.test"]}, "login.redirect_url_allowlist"),
        ({"redirect_url_allowlist": ["https://a.test/?x=1"]}, "login.redirect_url_allowlist"),
        ({"idp_id": "has space"}, "login.idp_id"),
        ({"login_token_ttl": 1}, "login.login_token_ttl"),
        ({"password_grant": "yes"}, "login.password_grant"),
        ({"client_secret": "a", "client_secret_file": "/x"}, "login.client_secret"),
        ({"clientid": "x"}, "login.clientid"),
    ],
)
def test_bad_values_name_their_key(login: dict[str, Any], key: str) -> None:
    assert key in error(with_login(login))
