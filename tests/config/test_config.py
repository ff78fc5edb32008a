"""Config parsing: every problem names its dotted key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bridge.config import BridgeConfig, load_config, parse_config
from bridge.errors import ConfigError


def minimal() -> dict[str, Any]:
    return {
        "server_name": "example.org",
        "public_baseurl": "https://matrix.example.org/",
        # The stateless strategy: the smallest valid file needs no store.
        "homeserver": {"url": "http://127.0.0.1:8008/", "strategy": "masquerade"},
        "appservice": {"as_token": "as-secret", "hs_token": "hs-secret"},
        "issuer": {
            "issuer": "https://auth.example.org/",
            "introspection": {"client_id": "bridge", "client_secret": "client-secret"},
        },
    }


def with_value(dotted: str, value: object) -> dict[str, Any]:
    """The minimal document with ``dotted`` set to ``value`` (sections created as needed)."""
    doc = minimal()
    *parents, last = dotted.split(".")
    section = doc
    for name in parents:
        section = section.setdefault(name, {})
    section[last] = value
    return doc


def without(dotted: str) -> dict[str, Any]:
    doc = minimal()
    *parents, last = dotted.split(".")
    section = doc
    for name in parents:
        section = section[name]
    del section[last]
    return doc


def config_error(raw: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return info.value


def test_minimal_document() -> None:
    config = parse_config(minimal())
    assert config.server_name == "example.org"
    assert config.homeserver.url == "http://127.0.0.1:8008"  # trailing slash dropped
    assert config.homeserver.strategy == "masquerade"
    assert config.appservice.as_token == "as-secret"
    assert config.appservice.sender_localpart == "oidc-bridge"
    assert config.issuer.introspection.auth == "client_secret_basic"
    assert config.issuer.localpart_claim == "username"
    assert config.token_cache.max_ttl == 120.0
    assert config.token_cache.stale_if_error is True
    assert config.issuer.validation == "introspection"
    assert config.issuer.leeway == 30.0
    assert config.issuer.timeout == 10.0
    assert config.issuer.jwt.algorithms == ("RS256", "PS256", "ES256", "EdDSA")
    assert config.listen.port == 8008


def test_config_is_frozen() -> None:
    config = parse_config(minimal())
    with pytest.raises(ValidationError, match="frozen"):
        config.server_name = "evil.org"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        config.homeserver.url = "http://evil.org"  # type: ignore[misc]


def test_mas_shared_secret_needs_no_client_id() -> None:
    doc = with_value("issuer.introspection.auth", "mas_shared_secret")
    del doc["issuer"]["introspection"]["client_id"]
    config = parse_config(doc)
    assert config.issuer.introspection.client_id is None


@pytest.mark.parametrize(
    "key",
    [
        "server_name",
        "public_baseurl",
        "homeserver",
        "homeserver.url",
        "appservice.as_token",
        "appservice.hs_token",
        "issuer",
        "issuer.issuer",
        "issuer.introspection",
        "issuer.introspection.client_id",
        "issuer.introspection.client_secret",
    ],
)
def test_missing_key_is_named(key: str) -> None:
    error = config_error(without(key))
    assert error.key == key
    assert "required" in error.problem


@pytest.mark.parametrize(
    ("key", "closest"),
    [
        ("servername", "server_name"),
        ("homeserver.urll", "url"),
        ("issuer.introspection.clientid", "client_id"),
        ("token_cache.maxttl", "max_ttl"),
        ("logging.levle", "level"),
    ],
)
def test_unknown_key_is_named_with_the_closest_valid_name(key: str, closest: str) -> None:
    error = config_error(with_value(key, "x"))
    assert error.key == key
    assert error.problem == f"is not a known setting (did you mean {closest}?)"
    assert str(error) == f"{key}: is not a known setting (did you mean {closest}?)"


def test_unknown_key_unlike_any_setting() -> None:
    error = config_error(with_value("homeserver.colour", "blue"))
    assert error.lines() == ["homeserver.colour: is not a known setting"]


@pytest.mark.parametrize(
    ("key", "misspelt"),
    [
        ("homeserver.url", "homeserver.urll"),
        ("server_name", "server_nmae"),
        ("issuer.introspection.client_secret", "issuer.introspection.client_secert"),
    ],
)
def test_a_misspelt_required_key_is_unknown_not_missing(key: str, misspelt: str) -> None:
    """One mistake, one line: not "url is required" beside "urll is not known"."""
    doc = without(key)
    *parents, last = misspelt.split(".")
    section = doc
    for name in parents:
        section = section[name]
    section[last] = "value"
    error = config_error(doc)
    closest = key.rsplit(".", 1)[-1]
    assert error.lines() == [f"{misspelt}: is not a known setting (did you mean {closest}?)"]


def test_every_problem_is_one_line_naming_its_key() -> None:
    doc = with_value("listen.port", "8008")
    doc["token_cache"] = {"max_ttl": "5m", "max_sise": 3}
    doc["homeserver"]["strategy"] = "impersonate"
    assert config_error(doc).lines() == [
        "homeserver.strategy: must be one of device_login, masquerade",
        "listen.port: must be an integer",
        "token_cache.max_ttl: must be a number",
        "token_cache.max_sise: is not a known setting (did you mean max_size?)",
    ]


@pytest.mark.parametrize("raw", [None, [], "server_name: x"])
def test_top_level_must_be_a_mapping(raw: object) -> None:
    assert config_error(raw).key == "(top level)"


def test_section_must_be_a_mapping() -> None:
    error = config_error(with_value("homeserver", "http://127.0.0.1:8008"))
    assert (error.key, error.problem) == ("homeserver", "must be a mapping")


@pytest.mark.parametrize(
    ("key", "url"),
    [
        ("homeserver.url", "ftp://127.0.0.1"),
        ("homeserver.url", "127.0.0.1:8008"),
        ("public_baseurl", "https://"),
        ("issuer.issuer", "https://auth.example.org/?tenant=1"),
        ("issuer.issuer", "https://auth.example.org/#x"),
        ("issuer.account_management_url", "mailto:admin@example.org"),
    ],
)
def test_bad_url(key: str, url: str) -> None:
    error = config_error(with_value(key, url))
    assert error.key == key
    assert "URL" in error.problem or "query" in error.problem


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("server_name", "exa mple.org", "not a valid Matrix server name"),
        ("server_name", 42, "non-empty string"),
        ("listen.port", "8008", "must be an integer"),
        ("listen.port", 70000, "must be at most 65535"),
        ("listen.port", -1, "must be at least 0"),
        ("listen.grace_period", float("inf"), "must be a finite number"),
        ("listen.port", True, "must be an integer"),
        ("token_cache.max_ttl", "5m", "must be a number"),
        ("token_cache.max_ttl", 0.5, "at least 1"),
        ("token_cache.negative_ttl", -1, "at least 0"),
        ("homeserver.strategy", "impersonate", "must be one of device_login, masquerade"),
        ("homeserver.probe_at_start", "yes", "must be true or false"),
        ("homeserver.admin_api_allowlist", "/_synapse/admin/v1", "must be a list"),
        ("logging.format", "xml", "must be one of plain, json"),
        ("ops.enabled", "no", "must be true or false"),
        ("homeserver.admin_api_allowlist", ["/admin/v1"], "must start with /_synapse/admin/"),
        ("appservice.sender_localpart", "Bridge", "must match"),
        ("appservice.as_token", 12345, "non-empty string"),
        ("appservice.as_token", "", "non-empty string"),
        ("issuer.introspection.auth", "none", "must be one of"),
        ("issuer.introspection.timeout", 0, "at least 0.1"),
        ("issuer.validation", "jwks", "must be one of introspection, jwt, jwt_then_introspection"),
        ("issuer.timeout", 0, "at least 0.1"),
        ("issuer.leeway", -1, "at least 0"),
        ("issuer.leeway", 3600, "at most 300"),
        ("issuer.jwt.algorithms", ["none"], "'none' is not allowed"),
        ("issuer.jwt.algorithms", ["RS256", "HS256"], "'HS256' is not allowed"),
        ("issuer.jwt.algorithms", ["HS512"], "'HS512' is not allowed"),
        ("issuer.jwt.algorithms", "RS256", "must be a list"),
        ("issuer.jwt.require_typ", "no", "must be true or false"),
        ("issuer.jwt.jwks_refetch_cooldown", 0, "at least 0.1"),
        ("issuer.jwt.jwks_refresh_interval", 1, "at least 10"),
        ("issuer.jwt.unknown_kid_ttl", -1, "at least 0"),
        ("token_cache.stale_if_error", "yes", "must be true or false"),
        ("well_known.client_extra", ["m.identity_server"], "mapping with string keys"),
    ],
)
def test_bad_value(key: str, value: object, problem: str) -> None:
    error = config_error(with_value(key, value))
    assert error.key == key
    assert problem in error.problem


def test_jwt_validation_needs_no_introspection() -> None:
    doc = with_value("issuer.validation", "jwt")
    del doc["issuer"]["introspection"]
    config = parse_config(doc)
    assert config.issuer.introspection is None
    assert config.issuer.validation == "jwt"


@pytest.mark.parametrize("validation", ["introspection", "jwt_then_introspection"])
def test_introspecting_validations_need_introspection(validation: str) -> None:
    doc = with_value("issuer.validation", validation)
    del doc["issuer"]["introspection"]
    assert config_error(doc).key == "issuer.introspection"


def test_introspection_timeout_defaults_to_the_issuer_timeout() -> None:
    config = parse_config(with_value("issuer.timeout", 3))
    assert config.issuer.timeout == 3
    assert config.issuer.introspection is not None
    assert config.issuer.introspection.timeout == 3


def test_jwt_settings() -> None:
    doc = with_value(
        "issuer.jwt",
        {
            "algorithms": ["ES256", "PS384"],
            "require_typ": False,
            "jwks_refresh_interval": 60,
            "jwks_refetch_cooldown": 2,
            "unknown_kid_ttl": 0,
        },
    )
    jwt = parse_config(doc).issuer.jwt
    assert jwt.algorithms == ("ES256", "PS384")
    assert (jwt.require_typ, jwt.jwks_refresh_interval) == (False, 60)
    assert (jwt.jwks_refetch_cooldown, jwt.unknown_kid_ttl) == (2, 0)
    assert config_error(with_value("issuer.jwt.kid_ttl", 1)).key == "issuer.jwt.kid_ttl"


@pytest.mark.parametrize(
    "reserved", ["m.homeserver", "m.authentication", "org.matrix.msc2965.authentication"]
)
def test_client_extra_cannot_override_reserved_keys(reserved: str) -> None:
    error = config_error(with_value("well_known.client_extra", {reserved: {"base_url": "x"}}))
    assert error.key == "well_known.client_extra"
    assert reserved in error.problem


def test_client_extra_is_kept() -> None:
    extra = {"m.identity_server": {"base_url": "https://id.example.org"}}
    config = parse_config(with_value("well_known.client_extra", extra))
    assert config.well_known.client_extra == extra


def test_as_token_must_differ_from_hs_token() -> None:
    error = config_error(with_value("appservice.hs_token", "as-secret"))
    assert error.key == "appservice.hs_token"
    assert "as-secret" not in str(error)


def test_secret_from_file(tmp_path: Path) -> None:
    (tmp_path / "as_token").write_text("as-from-file\n")
    doc = with_value("appservice.as_token_file", str(tmp_path / "as_token"))
    del doc["appservice"]["as_token"]
    assert parse_config(doc).appservice.as_token == "as-from-file"


def test_secret_file_path_expands_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (tmp_path / "introspection").write_text("secret-from-credential\n")
    doc = with_value(
        "issuer.introspection.client_secret_file", "${CREDENTIALS_DIRECTORY}/introspection"
    )
    del doc["issuer"]["introspection"]["client_secret"]
    config = parse_config(doc)
    assert config.issuer.introspection.client_secret == "secret-from-credential"


def test_secret_inline_and_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "as_token").write_text("as-from-file\n")
    error = config_error(with_value("appservice.as_token_file", str(tmp_path / "as_token")))
    assert error.key == "appservice.as_token"
    assert "not both" in error.problem


def test_unreadable_secret_file(tmp_path: Path) -> None:
    doc = with_value("appservice.hs_token_file", str(tmp_path / "missing"))
    del doc["appservice"]["hs_token"]
    error = config_error(doc)
    assert error.key == "appservice.hs_token_file"
    assert "cannot read" in error.problem


def test_empty_secret_file(tmp_path: Path) -> None:
    (tmp_path / "hs_token").write_text("\n")
    doc = with_value("appservice.hs_token_file", str(tmp_path / "hs_token"))
    del doc["appservice"]["hs_token"]
    error = config_error(doc)
    assert error.key == "appservice.hs_token_file"
    assert "is empty" in error.problem


def test_load_config(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(
        """
server_name: example.org
public_baseurl: https://matrix.example.org
homeserver: {url: "http://127.0.0.1:8008", strategy: masquerade}
appservice: {as_token: a, hs_token: b}
issuer:
  issuer: https://auth.example.org/
  introspection: {auth: mas_shared_secret, client_secret: s}
"""
    )
    config = load_config(path)
    assert isinstance(config, BridgeConfig)
    assert config.issuer.introspection.auth == "mas_shared_secret"


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert info.value.key == "(file)"
    assert "cannot read" in info.value.problem


def test_load_config_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text("server_name: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "(file)"
    assert "not valid YAML" in info.value.problem


def test_a_yaml_error_names_its_place_but_never_quotes_the_file(tmp_path: Path) -> None:
    # PyYAML's own message quotes the line it stopped at: here, a secret.
    bad_line = "as_token: 0123456789abcdef-not-to-be-logged: x"
    path = tmp_path / "bridge.yaml"
    path.write_text(f"server_name: example.test\n{bad_line}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "line 2, column" in info.value.problem
    registration = tmp_path / "other.yaml"
    registration.write_text(f"id: other\n{bad_line}\n")
    error = config_error(with_value("appservice.other_registrations", [str(registration)]))
    assert "line 2, column" in error.problem
    for problem in (info.value.problem, error.problem):
        assert "not-to-be-logged" not in problem


def test_other_registrations_give_their_exclusive_namespaces(tmp_path: Path) -> None:
    registration = tmp_path / "telegram.yaml"
    registration.write_text(
        "id: telegram\nnamespaces:\n"
        "  users:\n"
        "    - {exclusive: true, regex: '@telegram_.*:example\\.org'}\n"
        "    - {exclusive: false, regex: '@shared_.*:example\\.org'}\n"
        "  aliases:\n"
        "    - {exclusive: true, regex: '#telegram_.*:example\\.org'}\n",
        encoding="utf-8",
    )
    config = parse_config(with_value("appservice.other_registrations", [str(registration)]))
    assert config.appservice.exclusive_users == (r"@telegram_.*:example\.org",)
    assert config.appservice.exclusive_aliases == (r"#telegram_.*:example\.org",)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read"),
        ("just text", "not an appservice registration"),
        ("namespaces:\n  users: [{exclusive: true, regex: '(['}]\n", "invalid"),
    ],
)
def test_unusable_other_registration_names_the_key(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    registration = tmp_path / "other.yaml"
    if content is not None:
        registration.write_text(content, encoding="utf-8")
    error = config_error(with_value("appservice.other_registrations", [str(registration)]))
    assert error.key == "appservice.other_registrations"
    assert problem in error.problem


def test_reserved_localparts_must_be_localparts() -> None:
    error = config_error(with_value("appservice.reserved_localparts", ["Not Valid"]))
    assert error.key == "appservice.reserved_localparts"


def test_device_login_is_the_default_and_needs_a_store() -> None:
    doc = minimal()
    del doc["homeserver"]["strategy"]
    error = config_error(doc)
    assert error.key == "store"
    assert "device_login" in error.problem
    doc["store"] = {"encryption_keys": ["V0QrPSHhbWzrxAHdjSGt1BnqANpA1hTxyrQFjh0u7mU="]}
    config = parse_config(doc)
    assert config.homeserver.strategy == "device_login"
    assert config.homeserver.probe_at_start is True


def test_listen_limits_and_trusted_proxies() -> None:
    document = minimal()
    document["listen"] = {
        "workers": 2,
        "trusted_proxies": ["10.0.0.0/8", "::1", "192.168.1.7"],
        "max_request_body": "2G",
    }
    config = parse_config(document)
    assert config.listen.workers == 2
    assert [str(n) for n in config.listen.trusted_proxies] == [
        "10.0.0.0/8",
        "::1/128",
        "192.168.1.7/32",
    ]
    assert config.listen.max_request_body == 2 * 1024**3
    assert parse_config(minimal()).listen.max_request_body == 50 * 1024**2


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("trusted_proxies", ["10.0.0.0/33"]),
        ("trusted_proxies", ["example.org"]),
        ("max_request_body", "50 MB"),
        ("max_request_body", 0),
        ("workers", 0),
    ],
)
def test_listen_bad_values_name_the_key(key: str, value: object) -> None:
    document = minimal()
    document["listen"] = {key: value}
    with pytest.raises(ConfigError, match=rf"listen\.{key}"):
        parse_config(document)
