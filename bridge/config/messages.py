"""Turning pydantic's ``ValidationError`` into one clear line per problem, in the
admin's words: the dotted key (``issuer.introspection.client_secret``) and what is
wrong with it, never the value (it may be a secret).

An unknown key is "not a known setting", with the closest valid name when there is
one; a misspelt ``urll`` is that alone, not also a missing ``url``. A validator's
``ValueError`` is its own message; a :class:`SettingError` names its key, relative to
the section that raised it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from bridge.config.sections import BridgeConfig
from bridge.config.types import SettingError
from bridge.errors import ConfigError


def unwrap(annotation: Any) -> Any:
    """The model class inside ``X | None`` or ``Annotated[X, ...]``, if any."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, UnionType):
        models = [a for a in get_args(annotation) if isinstance(a, type)]
        annotation = next((a for a in models if issubclass(a, BaseModel)), annotation)
    return annotation


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The section model at ``loc`` (a path of keys from the top)."""
    model: type[BaseModel] = BridgeConfig
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        inner = unwrap(field.annotation) if field is not None else None
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return None
        model = inner
    return model


def _dotted(loc: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _closest(loc: tuple[str | int, ...]) -> str | None:
    """The valid name closest to the unknown key at ``loc``."""
    model = _model_at(loc[:-1])
    if model is None:
        return None
    matches = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _problem(error: ErrorDetails) -> tuple[tuple[str | int, ...], str]:
    """(location, problem) of one pydantic error, in the house's words (never the input)."""
    loc = tuple(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx", {})
    if kind == "extra_forbidden":
        near = _closest(loc)
        return loc, "is not a known setting" + (f" (did you mean {near}?)" if near else "")
    if kind == "missing":
        model = _model_at(loc[:-1])
        if model is not None and f"{loc[-1]}_file" in model.model_fields:
            return loc, f"is required (or {loc[-1]}_file)"
        return loc, "is required"
    if kind == "value_error":
        cause = ctx.get("error")
        if isinstance(cause, SettingError):
            return (*loc, *cause.key.split(".")), cause.problem
        return loc, str(cause) if cause is not None else error["msg"]
    words = {
        "model_type": "must be a mapping",
        "model_attributes_type": "must be a mapping",
        "dict_type": "must be a mapping with string keys",
        "string_type": "must be a non-empty string",
        "string_too_short": "must be a non-empty string",
        "int_type": "must be an integer",
        "int_from_float": "must be an integer",
        "float_type": "must be a number",
        "finite_number": "must be a finite number",
        "bool_type": "must be true or false",
        "tuple_type": "must be a list",
        "list_type": "must be a list",
        "frozen_instance": "cannot be changed",
    }
    if kind in words:
        return loc, words[kind]
    if kind in ("greater_than_equal", "greater_than"):
        return loc, f"must be at least {ctx.get('ge', ctx.get('gt')):g}"
    if kind in ("less_than_equal", "less_than"):
        return loc, f"must be at most {ctx.get('le', ctx.get('lt')):g}"
    if kind == "too_short":
        return loc, "must be a non-empty list"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return loc, f"must be one of {expected}"
    return loc, error["msg"]


def _problems(error: ValidationError) -> Iterator[tuple[str, str]]:
    """One (dotted key, problem) per mistake: a missing key that is the closest name
    of an unknown one beside it is the same mistake (a misspelling), said once."""
    found = [_problem(e) for e in error.errors(include_input=False, include_url=False)]
    misspelt = {
        (*loc[:-1], near)
        for loc, problem in found
        if problem.startswith("is not a known setting") and (near := _closest(loc)) is not None
    }
    for loc, problem in found:
        if problem.startswith("is required") and loc in misspelt:
            continue
        yield _dotted(loc), problem


def config_error(error: ValidationError) -> ConfigError:
    """A :class:`ConfigError` with every problem of ``error``, one line each."""
    problems = list(_problems(error))
    return ConfigError(*problems[0], more=problems[1:])
