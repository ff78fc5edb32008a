"""The shipped example config is valid, documents every setting, and fits the JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from bridge.config import BridgeConfig, json_schema, load_config
from bridge.config.messages import unwrap
from tests.cli.test_cli import bridge_cli
from tests.config.test_config import minimal

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "bridge.example.yaml"
# Settings the example can only show in a comment (they exclude one it sets).
COMMENTED = {"store.dsn": "kind: postgres only"}


def _settings(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted names of every setting of a config model, nested ones included."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        if name.endswith("_file"):
            continue  # the file form of a secret, documented with the secret itself
        kind = unwrap(field.annotation)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            names |= _settings(kind, prefix + name + ".")
        else:
            names.add(prefix + name)
    return names


def _documented(doc: object, prefix: str = "") -> set[str]:
    names: set[str] = set()
    if isinstance(doc, dict):
        for key, value in doc.items():
            names.add(prefix + key)
            if key != "client_extra":  # free-form content, not settings
                names |= _documented(value, prefix + key + ".")
    return names


def _example() -> Any:
    return yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))


def test_example_config_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert config.server_name == "example.org"
    assert config.issuer.introspection.auth == "client_secret_basic"


def test_example_config_documents_every_setting() -> None:
    missing = _settings(BridgeConfig) - _documented(_example())
    assert missing == set(COMMENTED)
    text = EXAMPLE.read_text(encoding="utf-8")
    for name in COMMENTED:
        assert f"#   {name.rsplit('.', 1)[-1]}: " in text


def test_the_json_schema_validates_the_example() -> None:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(_example(), schema)


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"homeserver": {"urll": "http://x"}}, ["homeserver"]),
        ({"listen": {"port": "8008"}}, ["listen", "port"]),
        ({"logging": {"format": "xml"}}, ["logging", "format"]),
    ],
)
def test_the_json_schema_refuses_what_the_loader_refuses(
    change: dict[str, Any], path: list[str]
) -> None:
    document = minimal()
    for section, values in change.items():
        document[section] = {**document.get(section, {}), **values}
    with pytest.raises(jsonschema.ValidationError) as info:
        jsonschema.validate(document, json_schema())
    assert list(info.value.absolute_path)[: len(path)] == path


def test_a_secret_may_be_given_as_a_file_in_the_schema_too() -> None:
    document = minimal()
    document["appservice"] = {"as_token_file": "/run/credentials/as", "hs_token": "h"}
    jsonschema.validate(document, json_schema())
    del document["appservice"]["as_token_file"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, json_schema())


def test_config_schema_command_prints_the_schema() -> None:
    result = bridge_cli("config-schema")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json_schema()
