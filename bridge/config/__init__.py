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

Adding a setting: a field (with a docstring) on its section's model, a line in
``config/bridge.example.yaml``; cross-field rules go in the section's
``model_validator(mode="after")``, raising :class:`SettingError` to name a key.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from cryptography.fernet import Fernet
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    Strict,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from bridge.auth.jws import ASYMMETRIC_ALGORITHMS
from bridge.errors import ConfigError

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

# Matrix server names: a hostname or IP literal with an optional port (spec appendix).
_SERVER_NAME = re.compile(r"^(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,255})(?::[0-9]{1,5})?$")
# Localparts the bridge itself sends as (the appservice sender): the modern grammar.
_LOCALPART = re.compile(r"^[a-z0-9._=/+-]+$")
_SIZE = re.compile(r"([1-9][0-9]*)\s*([KkMmGg]?)")


class SettingError(ValueError):
    """A validator's complaint about ``key`` (relative to the section it validates)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.problem = problem


# -- value types ------------------------------------------------------------------------


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http(s) URL, got {value!r}")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    return value


def _localpart(value: str) -> str:
    if not _LOCALPART.fullmatch(value):
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


# Bounded further per field: ``Annotated[Count, Field(ge=1)]``.
Count = Annotated[int, Strict(), Field(ge=0, le=2**31)]
Seconds = Annotated[float, Strict(), Field(ge=0.0, allow_inf_nan=False)]


# -- secrets from files -------------------------------------------------------------------


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


def _secrets_from_files(
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


def _secret_schema(*names: str) -> Callable[[dict[str, Any]], None]:
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


class Section(BaseModel):
    """A section of the file: frozen, typed, unknown keys refused."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        hide_input_in_errors=True,
        use_attribute_docstrings=True,
    )


# -- sections -----------------------------------------------------------------------------


class ListenConfig(Section):
    """Where the public (client-facing) listener binds."""

    host: Text = "127.0.0.1"
    port: Port = 8008
    workers: Annotated[Count, Field(ge=1, le=256)] = 1
    """Processes serving the port together (SO_REUSEPORT), each with its own caches,
    supervised by the main process."""
    trusted_proxies: tuple[NetworkSetting, ...] = ()
    """Peers whose X-Forwarded-For/-Proto are believed (a reverse proxy in front): the
    bridge appends to their chain. Anyone else's are replaced."""
    max_request_body: ByteSize = 50 * 1024 * 1024
    """Largest request body forwarded (Synapse's max_upload_size default): a larger one is
    413 M_TOO_LARGE before a byte reaches the homeserver."""
    grace_period: Seconds = 10.0
    """Seconds a stopping bridge (SIGTERM) waits for requests in flight before it exits."""


class ProvisioningListenConfig(Section):
    """A listener of its own for MAS's provisioning API."""

    host: Text = "127.0.0.1"
    port: Annotated[Count, Field(ge=1, le=65535)] = 8009


class OpsConfig(Section):
    """The ops listener: /metrics, /health and /ready, off the public listener."""

    enabled: Flag = True
    host: Text = "127.0.0.1"
    """Keep it private: metrics say a lot about the users' traffic."""
    port: Port = 8010


class LoggingConfig(Section):
    """What the bridge logs and how (changeable by SIGHUP)."""

    level: LogLevel = "INFO"
    """The environment variable BRIDGE_LOG_LEVEL, when set, wins."""
    format: LogFormat = "plain"
    """plain: one text line per record; json: one JSON object per line."""
    access_log_user_id: Flag = False
    """Put the authenticated user's Matrix ID in each access-log line."""


class AppserviceConfig(Section):
    """The bridge's application-service registration on the homeserver."""

    model_config = ConfigDict(json_schema_extra=_secret_schema("as_token", "hs_token"))

    as_token: Text = Field(repr=False)
    hs_token: Text = Field(repr=False)
    as_token_file: Text | None = None
    """A file holding as_token, instead of as_token itself."""
    hs_token_file: Text | None = None
    """A file holding hs_token, instead of hs_token itself."""
    id: Text = "matrix-oidc-bridge"
    sender_localpart: Localpart = "oidc-bridge"
    reserved_localparts: tuple[Text, ...] = ()
    """Users the bridge never acts as, beyond its own sender: e.g. Synapse's
    server-notices user (server_notices.system_mxid_localpart)."""
    other_registrations: tuple[Text, ...] = ()
    """The registration files of the homeserver's other appservices. Their exclusive
    user and alias namespaces (read from them) are closed to the bridge's users."""

    # Derived from other_registrations (read at load), not settings themselves.
    _exclusive_users: tuple[str, ...] = PrivateAttr(default=())
    _exclusive_aliases: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        return _secrets_from_files(data, ("as_token", "hs_token"))

    @field_validator("reserved_localparts")
    @classmethod
    def _reserved_are_localparts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for localpart in value:
            if not _LOCALPART.fullmatch(localpart):
                raise ValueError(f"{localpart!r} is not a localpart")
        return value

    @model_validator(mode="after")
    def _checks(self) -> AppserviceConfig:
        if self.as_token == self.hs_token:
            raise SettingError("hs_token", "must differ from as_token")
        users: list[str] = []
        aliases: list[str] = []
        for path in self.other_registrations:
            more_users, more_aliases = _exclusive_namespaces(path)
            users += more_users
            aliases += more_aliases
        self._exclusive_users = tuple(users)
        self._exclusive_aliases = tuple(aliases)
        return self

    @property
    def exclusive_users(self) -> tuple[str, ...]:
        """The exclusive user regexes of the homeserver's other appservices."""
        return self._exclusive_users

    @property
    def exclusive_aliases(self) -> tuple[str, ...]:
        """The exclusive alias regexes of the homeserver's other appservices."""
        return self._exclusive_aliases


def _yaml_problem(error: yaml.YAMLError | OSError) -> str:
    """What is wrong with a file, and where: never PyYAML's own text, which quotes the
    offending line (a secret, in a file that holds one)."""
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    problem = getattr(error, "problem", None) or "not valid YAML"
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return str(problem)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"


def _exclusive_namespaces(file_name: str) -> tuple[list[str], list[str]]:
    """The exclusive user and alias regexes of another appservice's registration file."""
    key = "other_registrations"
    path = Path(os.path.expandvars(file_name))
    try:
        registration = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        problem = _yaml_problem(e)
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


class HomeserverConfig(Section):
    """The legacy homeserver the bridge forwards to."""

    url: HttpURL
    """Its client-server API (not reachable by clients directly)."""
    strategy: Strategy = "device_login"
    """device_login: a real device and token per session (every homeserver);
    masquerade: appservice token + user_id + device_id (MSC4326 + MSC4190)."""
    probe_at_start: Flag = True
    """Ask the homeserver at start which strategies work, and refuse to start when the
    configured one cannot."""
    connect_timeout: Annotated[Seconds, Field(ge=0.1)] = 10.0
    read_timeout: Annotated[Seconds, Field(ge=1.0)] = 60.0
    """Seconds of silence from the homeserver before a request is given up (504)."""
    long_poll_margin: Annotated[Seconds, Field(ge=1.0)] = 15.0
    """A long poll (/sync, /events, sliding sync) waits for its own timeout parameter plus
    this margin instead."""
    pool_size: Annotated[Count, Field(ge=1)] = 100
    """Connections to the homeserver for ordinary requests."""
    long_poll_pool_size: Annotated[Count, Field(ge=1)] = 10_000
    """Connections for long polls, a pool of their own so they never starve the rest."""
    admin_api_allowlist: tuple[Text, ...] = ()
    """/_synapse/admin path prefixes forwarded for tokens with the admin scope
    (changeable by SIGHUP)."""
    provisioning_cache_size: Annotated[Count, Field(ge=1)] = 100_000
    provisioning_cache_ttl: Annotated[Seconds, Field(ge=1.0)] = 600.0
    admin_localpart: Localpart | None = None
    """A server admin the bridge acts as to read users' states (deactivated, locked,
    shadow-banned) under masquerade: the homeserver checks none of them for appservice
    requests."""
    account_state_ttl: Annotated[Seconds, Field(ge=1.0)] = 60.0

    @field_validator("url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("admin_api_allowlist")
    @classmethod
    def _admin_prefixes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for prefix in value:
            if not prefix.startswith("/_synapse/admin/"):
                raise ValueError(f"{prefix!r} must start with /_synapse/admin/")
        return value


class IntrospectionConfig(Section):
    """How the bridge authenticates to the issuer's introspection endpoint."""

    model_config = ConfigDict(json_schema_extra=_secret_schema("client_secret"))

    client_secret: Text = Field(repr=False)
    client_secret_file: Text | None = None
    """A file holding client_secret, instead of client_secret itself."""
    auth: IntrospectionAuth = "client_secret_basic"
    """client_secret_basic | client_secret_post (any RFC 7662 server), or
    mas_shared_secret (MAS: Authorization: Bearer <matrix.secret>)."""
    client_id: Text | None = None
    """Required unless auth is mas_shared_secret."""
    timeout: Annotated[Seconds, Field(ge=0.1)] = 10.0
    """Seconds; default: issuer.timeout."""

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        return _secrets_from_files(data, ("client_secret",))

    @model_validator(mode="after")
    def _checks(self) -> IntrospectionConfig:
        if self.auth != "mas_shared_secret" and self.client_id is None:
            raise SettingError("client_id", f"is required with auth: {self.auth}")
        return self


def _jwt_algorithms(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if value not in ASYMMETRIC_ALGORITHMS:
            # none and HS*: a token anyone holding the public key could sign.
            allowed = ", ".join(sorted(ASYMMETRIC_ALGORITHMS))
            raise ValueError(f"{value!r} is not allowed (one of {allowed})")
    return values


class JwtConfig(Section):
    """RFC 9068 JWT access tokens, checked against the issuer's JWKS (``jwks_uri``)."""

    algorithms: Annotated[tuple[Text, ...], AfterValidator(_jwt_algorithms)] = (
        "RS256",
        "PS256",
        "ES256",
        "EdDSA",
    )
    """The allow-list; none and HMAC algorithms are refused."""
    require_typ: Flag = True
    """typ at+jwt (or application/at+jwt), RFC 9068 2.1; false for an issuer that does not
    set it (ID tokens are then told apart by their claims)."""
    jwks_refresh_interval: Annotated[Seconds, Field(ge=10.0)] = 300.0
    """Seconds between background refreshes of the JWKS."""
    jwks_refetch_cooldown: Annotated[Seconds, Field(ge=0.1)] = 10.0
    """A kid the JWKS lacks causes one shared refetch, then none for this long."""
    unknown_kid_ttl: Seconds = 60.0
    """Seconds a kid that a refetch did not find is refused without fetching; 0 disables."""


class IssuerConfig(Section):
    """The upstream OAuth/OIDC issuer (MAS, or any server with DCR and device scopes)."""

    issuer: HttpURL
    """The issuer exactly as its discovery document states it (trailing slash and all)."""
    introspection: IntrospectionConfig | None = None
    """Required unless validation is jwt (with kind: oidc): nothing to introspect then."""
    kind: IssuerKind = "oidc"
    """mas: matrix-authentication-service (matrix.kind: synapse). The bridge then serves
    MAS's homeserver provisioning API (/_synapse/mas/*), authenticated by MAS's
    matrix.secret, which is also introspection.client_secret."""
    compat_url: HttpURL = ""
    """mas: where MAS serves its compatibility layer (legacy login, logout, refresh, SSO
    redirect); its public base URL. Default: the issuer."""
    provisioning_listen: ProvisioningListenConfig | None = None
    """mas: a listener of its own for /_synapse/mas/*; unset: the public listener."""
    account_management_url: HttpURL | None = None
    localpart_claim: Text = "username"
    metadata_refresh_interval: Annotated[Seconds, Field(ge=10.0)] = 300.0
    audiences: tuple[Text, ...] = ()
    """When not empty, a token's aud must name one of these (changeable by SIGHUP)."""
    client_ids: tuple[Text, ...] = ()
    """When not empty, a token's client_id must be one of these (changeable by SIGHUP)."""
    max_inflight: Annotated[Count, Field(ge=1)] = 64
    """Validations (introspections, JWKS fetches) that may wait on the issuer at once;
    beyond, 503 at once."""
    validation: Validation = "introspection"
    """introspection (RFC 7662), jwt (RFC 9068 access tokens checked against the JWKS),
    or jwt_then_introspection (a token that is not a JWT is introspected)."""
    timeout: Annotated[Seconds, Field(ge=0.1)] = 10.0
    """Seconds any call to the issuer may take (discovery, JWKS; introspection unless
    introspection.timeout says otherwise)."""
    leeway: Annotated[Seconds, Field(le=300.0)] = 30.0
    """Seconds of clock skew allowed on exp, nbf and iat (JWTs and introspection)."""
    jwt: JwtConfig = JwtConfig()

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_the_issuer(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if data.get("compat_url") is None and "issuer" in data:
            data = {**data, "compat_url": data["issuer"]}
        intro, timeout = data.get("introspection"), data.get("timeout")
        if (
            isinstance(intro, dict)
            and "timeout" not in intro
            and isinstance(timeout, int | float)
            and not isinstance(timeout, bool)
            and timeout >= 0.1  # else the error is issuer.timeout's alone
        ):
            data = {**data, "introspection": {**intro, "timeout": timeout}}
        return data

    @model_validator(mode="after")
    def _checks(self) -> IssuerConfig:
        if self.introspection is None:
            if self.kind == "mas":
                raise SettingError("introspection", "is required with kind: mas")
            if self.validation == "jwt_then_introspection":
                raise SettingError(
                    "introspection", "is required with validation: " + self.validation
                )
            if self.validation != "jwt":
                raise SettingError("introspection", "is required")
            return self
        if self.kind == "mas" and self.introspection.auth != "mas_shared_secret":
            raise SettingError(
                "introspection.auth",
                "must be mas_shared_secret with issuer.kind: mas (MAS's matrix.secret)",
            )
        return self


class TokenCacheConfig(Section):
    """Bounds of the validated-token cache (changeable by SIGHUP)."""

    max_size: Annotated[Count, Field(ge=1)] = 10_000
    max_ttl: Annotated[Seconds, Field(ge=1.0)] = 120.0
    """Seconds (Synapse's own maximum in MAS mode); never longer than the token's own
    expiry, and a hit never extends an entry."""
    negative_ttl: Seconds = 10.0
    """Seconds an inactive token is remembered; 0 disables."""
    negative_max_size: Annotated[Count, Field(ge=1)] = 10_000
    """Inactive tokens are kept apart, so garbage never evicts a live session."""
    stale_if_error: Flag = True
    """While the issuer cannot answer, a session validated before may be served past
    max_ttl, until the token's own expiry and never beyond."""


class WellKnownConfig(Section):
    """Extra content of the ``/.well-known/matrix/*`` files (changeable by SIGHUP)."""

    server: Text | None = None
    """/.well-known/matrix/server: federation delegation (unset: 404)."""
    client_extra: dict[str, Any] = Field(default_factory=dict)
    """Extra keys merged into /.well-known/matrix/client."""

    _RESERVED: ClassVar[frozenset[str]] = frozenset(
        {"m.homeserver", "m.authentication", "org.matrix.msc2965.authentication"}
    )

    @field_validator("client_extra")
    @classmethod
    def _not_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        clash = cls._RESERVED & set(value)
        if clash:
            raise ValueError(f"must not set {sorted(clash)[0]}")
        return value


class StoreConfig(Section):
    """The durable store of homeserver device tokens, encrypted at rest.

    ``encryption_keys`` are Fernet keys: the first encrypts, every one decrypts,
    so a new key goes first and the old one stays listed until the store has
    been re-encrypted (``rotate_key``). ``path`` is for ``kind: sqlite``,
    ``dsn`` for ``kind: postgres``.
    """

    model_config = ConfigDict(json_schema_extra=_secret_schema("encryption_keys"))

    encryption_keys: tuple[Text, ...] = Field(repr=False, min_length=1)
    encryption_keys_file: Text | None = None
    """A file with one key a line, instead of encryption_keys."""
    kind: StoreKind = "sqlite"
    path: Text = "matrix-oidc-bridge.db"
    """kind sqlite: the database file; its directory must exist."""
    dsn: Text | None = Field(default=None, repr=False)
    """kind postgres: the libpq URL (postgresql://...)."""
    dsn_file: Text | None = None
    """A file holding dsn, instead of dsn itself."""

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        return _secrets_from_files(data, ("dsn",), lists=("encryption_keys",))

    @field_validator("encryption_keys")
    @classmethod
    def _fernet_keys(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        for number, key in enumerate(keys, start=1):
            try:
                Fernet(key)
            except ValueError:
                # Never chain or echo: the message would be about the key itself.
                raise ValueError(
                    f"key {number} is not a Fernet key (32 bytes, urlsafe base64)"
                ) from None
        return keys

    @model_validator(mode="after")
    def _checks(self) -> StoreConfig:
        if self.kind == "sqlite":
            if self.dsn is not None:
                raise SettingError("dsn", "is only for kind: postgres")
        else:
            if "path" in self.model_fields_set:
                raise SettingError("path", "is only for kind: sqlite")
            if self.dsn is None:
                raise SettingError("dsn", "is required with kind: postgres (or dsn_file)")
            if not self.dsn.startswith(("postgresql://", "postgres://")):
                raise SettingError("dsn", "must be a postgresql:// URL")
        return self


# What a redirectUrl allow-list entry may be: an absolute URL prefix.
_URL_PREFIX = re.compile(r"[a-z][a-z0-9+.-]*:\S*")


def _redirect_prefix(value: str) -> str:
    if not _URL_PREFIX.fullmatch(value):
        raise ValueError(f"{value!r} must be an absolute URL prefix (scheme:...)")
    parts = urlsplit(value)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{value!r} must not have a query, fragment or user information")
    return value


def _signing_algorithm(value: str) -> str:
    if value not in ASYMMETRIC_ALGORITHMS:
        raise ValueError(
            f"{value!r} is not an asymmetric JWS algorithm (none and HMAC are never accepted)"
        )
    return value


class LoginConfig(Section):
    """The bridge's own legacy login layer (issuer.kind: oidc): SSO redirect,
    m.login.token, refresh, logout and back-channel logout, served by the bridge as a
    confidential OAuth client of the issuer (bridge.login). Needs the store."""

    client_id: Text | None = None
    """The bridge's client at the issuer. Default: the introspection client's."""
    client_secret: Text | None = Field(default=None, repr=False)
    """Its secret. Default: the introspection client's."""
    client_secret_file: Text | None = None
    """A file holding client_secret, instead of client_secret itself."""
    client_auth: Literal["client_secret_basic", "client_secret_post"] | None = None
    """How the client authenticates. Default: as the introspection client does."""
    redirect_url_allowlist: tuple[Annotated[Text, AfterValidator(_redirect_prefix)], ...] = ()
    """Where an SSO login may return to (redirectUrl): URL prefixes, matched on scheme,
    host and port exactly and on the path segment by segment. Empty: anywhere, as
    Synapse (the confirmation page names the client's host)."""
    extra_scopes: tuple[Text, ...] = ()
    """Scopes asked for beyond openid, the Matrix API scope and the device scope."""
    idp_id: Annotated[Text, Field(pattern=r"^[A-Za-z0-9._~-]{1,64}$")] = "oidc"
    """The one identity provider listed in the m.login.sso flow."""
    idp_name: Text = "Single sign-on"
    flow_ttl: Annotated[Seconds, Field(ge=30.0)] = 600.0
    """Seconds an SSO flow may take from the redirect to the confirmation."""
    login_token_ttl: Annotated[Seconds, Field(ge=5.0)] = 120.0
    """Seconds a loginToken may wait for its POST /login (one use)."""
    password_grant: Flag = False
    """m.login.password exchanged at the issuer's token endpoint (resource owner
    password credentials). Off: see README."""
    logout_retention: Annotated[Seconds, Field(ge=60.0)] = 7 * 86400.0
    """Seconds a logout's "not before" moment is kept: longer than the issuer's access
    tokens live."""
    sync_interval: Annotated[Seconds, Field(ge=0.05)] = 1.0
    """SQLite: seconds between looks for other processes' logouts (PostgreSQL
    announces them at once with LISTEN/NOTIFY)."""
    signing_algorithms: tuple[Annotated[Text, AfterValidator(_signing_algorithm)], ...] = (
        "RS256",
        "PS256",
        "ES256",
        "EdDSA",
    )
    """Signature algorithms accepted on ID tokens and logout tokens."""

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        return _secrets_from_files(data, ("client_secret",))

    def client(self, introspection: IntrospectionConfig | None) -> tuple[str, str, str]:
        """(client_id, client_secret, client_auth), the introspection client's by default."""
        client_id = self.client_id or (introspection.client_id if introspection else None)
        secret = self.client_secret or (introspection.client_secret if introspection else None)
        default_auth = (
            introspection.auth
            if introspection is not None and introspection.auth != "mas_shared_secret"
            else "client_secret_basic"
        )
        # Both checked by BridgeConfig.
        assert client_id is not None
        assert secret is not None
        return client_id, secret, self.client_auth or default_auth


class BridgeConfig(Section):
    """The whole configuration of matrix-oidc-bridge."""

    model_config = ConfigDict(title="matrix-oidc-bridge configuration")

    server_name: Text
    """The Matrix server name: user IDs are @localpart:<server_name>."""
    public_baseurl: HttpURL
    """Where clients reach the bridge; m.homeserver.base_url in /.well-known/matrix/client."""
    homeserver: HomeserverConfig
    appservice: AppserviceConfig
    issuer: IssuerConfig
    listen: ListenConfig = ListenConfig()
    token_cache: TokenCacheConfig = TokenCacheConfig()
    well_known: WellKnownConfig = WellKnownConfig()
    store: StoreConfig | None = None
    """None when the file has no store section: the bridge then keeps nothing."""
    ops: OpsConfig = OpsConfig()
    logging: LoggingConfig = LoggingConfig()
    login: LoginConfig | None = None
    """None when the file has no login section: legacy login is then forwarded to the
    homeserver (GET/POST /login) or refused (/logout), as before."""

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, value: str) -> str:
        if not _SERVER_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid Matrix server name")
        return value

    @model_validator(mode="after")
    def _checks(self) -> BridgeConfig:
        if self.homeserver.strategy == "device_login" and self.store is None:
            raise SettingError(
                "store", "is required with homeserver.strategy: device_login (it keeps the tokens)"
            )
        if self.login is not None:
            if self.issuer.kind != "oidc":
                raise SettingError(
                    "login", "is only for issuer.kind: oidc (MAS serves legacy login itself)"
                )
            if self.store is None:
                raise SettingError(
                    "login", "needs the store section (login tokens, sessions and logouts)"
                )
            introspection = self.issuer.introspection
            if self.login.client_id is None and (
                introspection is None or introspection.client_id is None
            ):
                raise SettingError("login.client_id", "is required (the introspection has none)")
            if self.login.client_secret is None and introspection is None:
                raise SettingError(
                    "login.client_secret", "is required (there is no introspection client)"
                )
        return self


# -- errors, in the admin's words -----------------------------------------------------------


def _unwrap(annotation: Any) -> Any:
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
        inner = _unwrap(field.annotation) if field is not None else None
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
        raise ConfigError("(file)", f"{path} is not valid YAML: {_yaml_problem(e)}") from None
    return parse_config(raw)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file (for editors and ``config-schema``)."""
    schema = BridgeConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
