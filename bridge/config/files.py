"""What the config reads besides its own file: secrets given as file paths
(``as_token_file``; one item a line for a list), and the registrations of the
homeserver's other appservices (``appservice.other_registrations``).

``$VARS`` in these paths are expanded, so systemd credentials can be named as
``${CREDENTIALS_DIRECTORY}/as_token``. What is wrong with a file is said without
quoting it: a file that holds a secret must never have a line of it in a message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bridge.config.types import SettingError


def _read_secret_file(name: str, file_name: object) -> str:
    if not isinstance(file_name, str) or not file_name:
        raise SettingError(f"{name}_file", "must be a non-empty string")
    path = Path(os.path.expandvars(file_name))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SettingError(f"{name}_file", f"cannot read {path}: {e.strerror}") from None
    if not text.strip():
        raise SettingError(f"{name}_file", f"{path} is empty")
    return text


def secrets_from_files(
    data: Any, names: tuple[str, ...], lists: tuple[str, ...] = ()
) -> dict[str, Any] | Any:
    """``data`` with each ``name`` read from ``name_file`` where that is given (never
    both); a list secret's file holds one item a line."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for name in (*names, *lists):
        file_name = data.get(f"{name}_file")
        if file_name is None:
            continue
        if data.get(name) is not None:
            raise SettingError(name, f"give either {name} or {name}_file, not both")
        text = _read_secret_file(name, file_name)
        if name in lists:
            data[name] = [line.strip() for line in text.splitlines() if line.strip()]
        else:
            data[name] = text.strip()
    return data


def secret_schema(*names: str) -> Callable[[dict[str, Any]], None]:
    """JSON Schema: each secret is required as itself or as its ``_file``."""

    def adjust(schema: dict[str, Any]) -> None:
        required = schema.get("required", [])
        alternatives = []
        for name in names:
            if name in required:
                required.remove(name)
                either = [{"required": [name]}, {"required": [f"{name}_file"]}]
                alternatives.append({"anyOf": either})
        if not required:
            schema.pop("required", None)
        if alternatives:
            schema["allOf"] = alternatives

    return adjust


def yaml_problem(error: yaml.YAMLError | OSError) -> str:
    """What is wrong with a file, and where: never PyYAML's own text, which quotes the
    offending line (a secret, in a file that holds one)."""
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    problem = getattr(error, "problem", None) or "not valid YAML"
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return str(problem)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"


def exclusive_namespaces(file_name: str) -> tuple[list[str], list[str]]:
    """The exclusive user and alias regexes of another appservice's registration file."""
    key = "other_registrations"
    path = Path(os.path.expandvars(file_name))
    try:
        registration = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        problem = yaml_problem(e)
        raise SettingError(key, f"cannot read the registration {path}: {problem}") from None
    namespaces = registration.get("namespaces") if isinstance(registration, dict) else None
    if not isinstance(namespaces, dict):
        raise SettingError(key, f"{path} is not an appservice registration (no namespaces)")
    found: dict[str, list[str]] = {"users": [], "aliases": []}
    for kind, regexes in found.items():
        for entry in namespaces.get(kind) or []:
            if isinstance(entry, dict) and entry.get("exclusive") is True:
                regex = entry.get("regex")
                try:
                    if not isinstance(regex, str):
                        raise TypeError(regex)
                    re.compile(regex)
                except (re.error, TypeError):
                    raise SettingError(key, f"{path}: {kind} regex {regex!r} is invalid") from None
                regexes.append(regex)
    return found["users"], found["aliases"]
