"""The value types of the config file's settings, and the base of every section.

Each setting's type validates itself (pydantic ``Annotated`` types, bounded further
per field with ``Field(ge=...)``) and says what is wrong in the admin's words: a
``ValueError`` from a validator is its whole message (see
:mod:`bridge.config.messages`), and :class:`SettingError` names a key besides.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    WithJsonSchema,
)

from bridge.auth.jws import ASYMMETRIC_ALGORITHMS

IntrospectionAuth = Literal["client_secret_basic", "client_secret_post", "mas_shared_secret"]
# How access tokens are judged: RFC 7662 introspection, RFC 9068 JWTs checked
# locally, or JWTs locally and anything that is not a JWT by introspection.
Validation = Literal["introspection", "jwt", "jwt_then_introspection"]
IssuerKind = Literal["oidc", "mas"]
Strategy = Literal["device_login", "masquerade"]
StoreKind = Literal["sqlite", "postgres"]
LogFormat = Literal["plain", "json"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Localparts the bridge itself sends as (the appservice sender): the modern grammar.
LOCALPART = re.compile(r"^[a-z0-9._=/+-]+$")
_SIZE = re.compile(r"([1-9][0-9]*)\s*([KkMmGg]?)")
# What a redirectUrl allow-list entry may be: an absolute URL prefix.
_URL_PREFIX = re.compile(r"[a-z][a-z0-9+.-]*:\S*")


class SettingError(ValueError):
    """A validator's complaint about ``key`` (relative to the section it validates)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.problem = problem


class Section(BaseModel):
    """A section of the file: frozen, typed, unknown keys refused."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        hide_input_in_errors=True,
        use_attribute_docstrings=True,
    )


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http(s) URL, got {value!r}")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    return value


def _localpart(value: str) -> str:
    if not LOCALPART.fullmatch(value):
        raise ValueError("is not a valid localpart (it must match [a-z0-9._=/+-]+)")
    return value


def _network(value: object) -> Network:
    """A CIDR (a bare address is a /32 or /128)."""
    if not isinstance(value, str):
        raise ValueError("must be an address or CIDR, as a string")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError as e:
        raise ValueError(str(e)) from None


def _size(value: object) -> int:
    """A byte count: an integer, or a number with K, M or G (powers of 1024)."""
    if isinstance(value, str) and (m := _SIZE.fullmatch(value.strip())):
        return int(m[1]) << 10 * " KMG".index((m[2] or " ").upper())
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError("must be a positive byte count such as 52428800 or 50M")


def _redirect_prefix(value: str) -> str:
    if not _URL_PREFIX.fullmatch(value):
        raise ValueError(f"{value!r} must be an absolute URL prefix (scheme:...)")
    parts = urlsplit(value)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{value!r} must not have a query, fragment or user information")
    return value


def _jwt_algorithms(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if value not in ASYMMETRIC_ALGORITHMS:
            # none and HS*: a token anyone holding the public key could sign.
            allowed = ", ".join(sorted(ASYMMETRIC_ALGORITHMS))
            raise ValueError(f"{value!r} is not allowed (one of {allowed})")
    return values


def _signing_algorithm(value: str) -> str:
    if value not in ASYMMETRIC_ALGORITHMS:
        raise ValueError(
            f"{value!r} is not an asymmetric JWS algorithm (none and HMAC are never accepted)"
        )
    return value


Text = Annotated[str, Strict(), Field(min_length=1)]
HttpURL = Annotated[str, Strict(), Field(min_length=1), AfterValidator(_http_url)]
Localpart = Annotated[str, Strict(), Field(min_length=1), AfterValidator(_localpart)]
Flag = Annotated[bool, Strict()]
Port = Annotated[int, Strict(), Field(ge=0, le=65535)]
ByteSize = Annotated[
    int,
    PlainValidator(_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": r"^\s*[1-9][0-9]*\s*[KkMmGg]?\s*$"},
            ],
            "description": "bytes, or a number with K, M or G (powers of 1024)",
        }
    ),
]
NetworkSetting = Annotated[
    Network,
    PlainValidator(_network),
    WithJsonSchema({"type": "string", "description": "an IP address or CIDR"}),
]
RedirectPrefix = Annotated[Text, AfterValidator(_redirect_prefix)]


# Bounded further per field: ``Annotated[Count, Field(ge=1)]``.
Count = Annotated[int, Strict(), Field(ge=0, le=2**31)]
Seconds = Annotated[float, Strict(), Field(ge=0.0, allow_inf_nan=False)]

# The JWS algorithms a setting may name: those of bridge.auth.jws, and no other. Each
# setting keeps its own wording: issuer.jwt.algorithms is judged as a list (its message
# lists the allowed ones), login.signing_algorithms item by item (the key names the
# item's index).
JwtAlgorithms = Annotated[tuple[Text, ...], AfterValidator(_jwt_algorithms)]
SigningAlgorithm = Annotated[Text, AfterValidator(_signing_algorithm)]
DEFAULT_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
"""The default of both issuer.jwt.algorithms and login.signing_algorithms."""
