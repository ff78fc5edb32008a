"""The shipped example config is valid and documents every setting."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import yaml

from bridge.config import BridgeConfig, load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "bridge.example.yaml"


def _settings(cls: type, prefix: str = "") -> set[str]:
    """Dotted names of every setting of a config dataclass, nested ones included."""
    names: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("derived"):
            continue  # computed from other settings, not a setting itself
        kind, name = hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(kind):
            names |= _settings(kind, name + ".")  # type: ignore[arg-type]
        else:
            names.add(name)
    return names


def _documented(doc: object, prefix: str = "") -> set[str]:
    names: set[str] = set()
    if isinstance(doc, dict):
        for key, value in doc.items():
            names.add(prefix + key)
            if key != "client_extra":  # free-form content, not settings
                names |= _documented(value, prefix + key + ".")
    return names


def test_example_config_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert config.server_name == "example.org"
    assert config.issuer.introspection.auth == "client_secret_basic"


def test_example_config_documents_every_setting() -> None:
    documented = _documented(yaml.safe_load(EXAMPLE.read_text(encoding="utf-8")))
    missing = _settings(BridgeConfig) - documented
    assert not missing
