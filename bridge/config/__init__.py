"""Typed, frozen configuration, parsed once from one YAML file (pydantic v2 models).

One model per section of the file; each validates itself, and every problem
is reported as a :class:`~bridge.errors.ConfigError` naming the dotted key
(``issuer.introspection.client_secret``) and what is wrong with it, one line
per problem, before the event loop starts. An unknown key is an error, with
the closest valid name when there is one (a misspelt ``urll`` is "not a known
setting (did you mean url?)", not a missing ``url``).

Secrets may be given inline (``as_token``) or as a file path
(``as_token_file``); ``$VARS`` in file paths are expanded, so systemd
credentials can be named as ``${CREDENTIALS_DIRECTORY}/as_token``.

``BridgeConfig.model_json_schema()`` is the file's JSON Schema
(``matrix-oidc-bridge config-schema``); field docstrings are its descriptions.

The package, by concern:

- :mod:`bridge.config.types`: the value types of settings (URLs, localparts,
  sizes, networks, seconds, JWS algorithms), :class:`Section`, :class:`SettingError`;
- :mod:`bridge.config.files`: secrets read from ``*_file`` paths, other appservices'
  registrations, and what is wrong with a file without quoting it;
- :mod:`bridge.config.sections`: one model per section, and :class:`BridgeConfig`;
- :mod:`bridge.config.messages`: pydantic's errors in the admin's words;
- here: loading and parsing, and the names the rest of the bridge imports.

Adding a setting: a field (with a docstring) on its section's model, a line in
``config/bridge.example.yaml``; cross-field rules go in the section's
``model_validator(mode="after")``, raising :class:`SettingError` to name a key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bridge.config.files import yaml_problem
from bridge.config.messages import config_error
from bridge.config.sections import (
    AppserviceConfig,
    BridgeConfig,
    HomeserverConfig,
    IntrospectionConfig,
    IssuerConfig,
    JwtConfig,
    ListenConfig,
    LoggingConfig,
    LoginConfig,
    OpsConfig,
    ProvisioningListenConfig,
    StoreConfig,
    TokenCacheConfig,
    WellKnownConfig,
)
from bridge.config.types import (
    IntrospectionAuth,
    IssuerKind,
    LogFormat,
    LogLevel,
    Network,
    Section,
    SettingError,
    StoreKind,
    Strategy,
    Validation,
)
from bridge.errors import ConfigError

__all__ = [
    "AppserviceConfig",
    "BridgeConfig",
    "HomeserverConfig",
    "IntrospectionAuth",
    "IntrospectionConfig",
    "IssuerConfig",
    "IssuerKind",
    "JwtConfig",
    "ListenConfig",
    "LogFormat",
    "LogLevel",
    "LoggingConfig",
    "LoginConfig",
    "Network",
    "OpsConfig",
    "ProvisioningListenConfig",
    "Section",
    "SettingError",
    "StoreConfig",
    "StoreKind",
    "Strategy",
    "TokenCacheConfig",
    "Validation",
    "WellKnownConfig",
    "config_error",
    "json_schema",
    "load_config",
    "parse_config",
]


def parse_config(raw: object) -> BridgeConfig:
    """Validate an already-loaded YAML document into a :class:`BridgeConfig`."""
    try:
        return BridgeConfig.model_validate(raw)
    except ValidationError as e:
        raise config_error(e) from None


def load_config(path: Path) -> BridgeConfig:
    """Read and validate the YAML file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError("(file)", f"cannot read {path}: {e.strerror}") from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("(file)", f"{path} is not valid YAML: {yaml_problem(e)}") from None
    return parse_config(raw)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file (for editors and ``config-schema``)."""
    schema = BridgeConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
