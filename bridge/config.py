"""Typed, frozen configuration, parsed once from one YAML file.

Every problem is reported as a :class:`~bridge.errors.ConfigError` naming the
key (``issuer.introspection.client_secret``) and what is wrong with it, before
the event loop starts. Secrets may be given inline (``as_token``) or as a file
path (``as_token_file``); ``$VARS`` in file paths are expanded, so systemd
credentials can be named as ``${CREDENTIALS_DIRECTORY}/as_token``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import yaml
from cryptography.fernet import Fernet

from bridge.errors import ConfigError

IntrospectionAuth = Literal["client_secret_basic", "client_secret_post", "mas_shared_secret"]
IssuerKind = Literal["oidc", "mas"]
Strategy = Literal["device_login", "masquerade"]
StoreKind = Literal["sqlite", "postgres"]

# Matrix server names: a hostname or IP literal with an optional port (spec appendix).
_SERVER_NAME = re.compile(r"^(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,255})(?::[0-9]{1,5})?$")
# Localparts the bridge itself sends as (the appservice sender): the modern grammar.
_LOCALPART = re.compile(r"^[a-z0-9._=/+-]+$")
_SIZE = re.compile(r"([1-9][0-9]*)\s*([KkMmGg]?)")


@dataclass(frozen=True)
class ListenConfig:
    """Where the public (client-facing) listener binds."""

    host: str = "127.0.0.1"
    port: int = 8008
    # Processes serving the port together (SO_REUSEPORT), each with its own
    # caches, supervised by the main process.
    workers: int = 1
    # Peers whose X-Forwarded-For/-Proto are believed (a reverse proxy in front):
    # the bridge appends to their chain. Anyone else's are replaced.
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # Largest request body forwarded (Synapse's max_upload_size default): a
    # larger one is 413 M_TOO_LARGE before a byte reaches the homeserver.
    max_request_body: int = 50 * 1024 * 1024


@dataclass(frozen=True)
class AppserviceConfig:
    """The bridge's application-service registration on the homeserver."""

    as_token: str
    hs_token: str
    id: str = "matrix-oidc-bridge"
    sender_localpart: str = "oidc-bridge"
    # Users the bridge never acts as, beyond its own sender: e.g. Synapse's
    # server-notices user (server_notices.system_mxid_localpart).
    reserved_localparts: tuple[str, ...] = ()
    # The registration files of the homeserver's other appservices. Their
    # exclusive user and alias namespaces (read from them) are closed to the
    # bridge's users: the homeserver lets an appservice act in them.
    other_registrations: tuple[str, ...] = ()
    exclusive_users: tuple[str, ...] = field(default=(), metadata={"derived": True})
    exclusive_aliases: tuple[str, ...] = field(default=(), metadata={"derived": True})


@dataclass(frozen=True)
class HomeserverConfig:
    """The legacy homeserver the bridge forwards to."""

    url: str
    # device_login: a real device and token per session (every homeserver);
    # masquerade: appservice token + user_id + device_id (MSC4326 + MSC4190).
    strategy: Strategy = "device_login"
    # Ask the homeserver at start which strategies work, and refuse to start
    # when the configured one cannot.
    probe_at_start: bool = True
    connect_timeout: float = 10.0
    # Seconds of silence from the homeserver before a request is given up (504).
    read_timeout: float = 60.0
    # A long poll (/sync, /events, sliding sync) waits for its own ``timeout``
    # parameter plus this margin instead.
    long_poll_margin: float = 15.0
    # Connections to the homeserver: one pool for ordinary requests, and one
    # of its own for long polls, so held long polls never starve the rest.
    pool_size: int = 100
    long_poll_pool_size: int = 10_000
    admin_api_allowlist: tuple[str, ...] = ()
    provisioning_cache_size: int = 100_000
    provisioning_cache_ttl: float = 600.0
    # A server admin the bridge acts as to read users' states (deactivated,
    # locked, shadow-banned) under masquerade: the homeserver checks none of
    # them for appservice requests.
    admin_localpart: str | None = None
    account_state_ttl: float = 60.0


@dataclass(frozen=True)
class IntrospectionConfig:
    """How the bridge authenticates to the issuer's introspection endpoint."""

    auth: IntrospectionAuth
    client_secret: str
    client_id: str | None = None
    timeout: float = 10.0


@dataclass(frozen=True)
class IssuerConfig:
    """The upstream OAuth/OIDC issuer (MAS, or any server with DCR and device scopes)."""

    issuer: str
    introspection: IntrospectionConfig
    # mas: matrix-authentication-service (matrix.kind: synapse). The bridge then
    # serves MAS's homeserver provisioning API (/_synapse/mas/*), authenticated
    # by MAS's matrix.secret, which is also introspection.client_secret.
    kind: IssuerKind = "oidc"
    # mas: where MAS serves its compatibility layer (legacy login, logout,
    # refresh, SSO redirect); its public base URL. Default: the issuer.
    compat_url: str = ""
    # mas: a listener of its own for /_synapse/mas/* (MAS's matrix.endpoint then
    # points there); None serves it on the public listener.
    provisioning_listen: ListenConfig | None = None
    account_management_url: str | None = None
    localpart_claim: str = "username"
    metadata_refresh_interval: float = 300.0
    # When not empty, a token's ``aud`` must name one of these, and its
    # ``client_id`` must be one of those (introspection answers and JWTs alike).
    audiences: tuple[str, ...] = ()
    client_ids: tuple[str, ...] = ()
    # Validations that may wait on the issuer at once; beyond, 503 at once.
    max_inflight: int = 64


@dataclass(frozen=True)
class TokenCacheConfig:
    """Bounds of the validated-token cache."""

    max_size: int = 10_000
    max_ttl: float = 300.0
    negative_ttl: float = 10.0
    # Inactive tokens are kept apart, so garbage never evicts a live session.
    negative_max_size: int = 10_000


@dataclass(frozen=True)
class WellKnownConfig:
    """Extra content of the ``/.well-known/matrix/*`` files."""

    server: str | None = None
    client_extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoreConfig:
    """The durable store of homeserver device tokens, encrypted at rest.

    ``encryption_keys`` are Fernet keys: the first encrypts, every one decrypts,
    so a new key goes first and the old one stays listed until the store has
    been re-encrypted (``rotate_key``). ``path`` is for ``kind: sqlite``,
    ``dsn`` for ``kind: postgres``.
    """

    encryption_keys: tuple[str, ...] = field(repr=False)
    kind: StoreKind = "sqlite"
    path: str = "matrix-oidc-bridge.db"
    dsn: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class LoginConfig:
    """The bridge's own legacy login layer (``issuer.kind: oidc``): SSO redirect,
    ``m.login.token``, refresh, logout and back-channel logout, served by the bridge
    as a confidential OAuth client of the issuer (bridge.login).

    ``client_id``/``client_secret`` default to the introspection client's.
    """

    client_id: str
    client_secret: str = field(repr=False)
    client_auth: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    # Where an SSO login may send the browser back to (redirectUrl): URL prefixes,
    # matched on scheme, host and port exactly and on the path segment by segment.
    # Empty: anywhere, as Synapse (the confirmation page names the client's host).
    redirect_url_allowlist: tuple[str, ...] = ()
    # Scopes asked for beyond openid, the Matrix API scope and the device scope
    # (offline_access, where the issuer wants it for refresh tokens).
    extra_scopes: tuple[str, ...] = ()
    # The one identity provider listed in the m.login.sso flow.
    idp_id: str = "oidc"
    idp_name: str = "Single sign-on"
    # Seconds an SSO flow may take from the redirect to the confirmation.
    flow_ttl: float = 600.0
    # Seconds a loginToken may wait for its POST /login (one use).
    login_token_ttl: float = 120.0
    # m.login.password exchanged at the issuer's token endpoint (resource owner
    # password credentials): off, see README.
    password_grant: bool = False
    # Seconds a logout's "not before" moment is kept: longer than any access
    # token of the issuer lives.
    logout_retention: float = 7 * 86400.0
    # Seconds between two looks at the store for other instances' logouts
    # (SQLite; PostgreSQL announces them at once with LISTEN/NOTIFY).
    sync_interval: float = 1.0
    # Signature algorithms accepted on ID tokens and logout tokens (never none or HMAC).
    signing_algorithms: tuple[str, ...] = ("RS256", "PS256", "ES256", "EdDSA")


@dataclass(frozen=True)
class BridgeConfig:
    """The whole configuration."""

    server_name: str
    public_baseurl: str
    homeserver: HomeserverConfig
    appservice: AppserviceConfig
    issuer: IssuerConfig
    listen: ListenConfig = ListenConfig()
    token_cache: TokenCacheConfig = TokenCacheConfig()
    well_known: WellKnownConfig = WellKnownConfig()
    # None when the file has no ``store`` section: the bridge then keeps nothing.
    store: StoreConfig | None = None
    # None when the file has no ``login`` section: legacy login is then forwarded
    # to the homeserver (GET/POST /login) or refused (/logout), as before.
    login: LoginConfig | None = None


class _Section:
    """A mapping being read, which knows its own dotted path for error messages."""

    def __init__(self, raw: object, path: str) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(path or "(top level)", "must be a mapping")
        self._raw: dict[str, object] = raw
        self._path = path
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def _get(self, name: str) -> object:
        self._seen.add(name)
        return self._raw.get(name)

    def present(self, name: str) -> bool:
        """Whether ``name`` is set (to anything but null)."""
        return self._get(name) is not None

    def section(self, name: str, *, required: bool = True) -> _Section:
        raw = self._get(name)
        if raw is None:
            if required:
                raise ConfigError(self.key(name), "is required")
            raw = {}
        return _Section(raw, self.key(name))

    def text(self, name: str, default: str | None = None) -> str:
        value = self.opt_text(name)
        if value is None:
            if default is None:
                raise ConfigError(self.key(name), "is required")
            return default
        return value

    def opt_text(self, name: str) -> str | None:
        value = self._get(name)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(self.key(name), "must be a non-empty string")
        return value

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(self.key(name), "must be a number")
        if not math.isfinite(value) or value < minimum:
            raise ConfigError(self.key(name), f"must be a finite number of at least {minimum:g}")
        return float(value)

    def integer(self, name: str, default: int, *, minimum: int = 0, maximum: int = 2**31) -> int:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.key(name), "must be an integer")
        if not minimum <= value <= maximum:
            raise ConfigError(self.key(name), f"must be between {minimum} and {maximum}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(self.key(name), "must be true or false")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str | None = None) -> str:
        value = self.text(name, default)
        if value not in choices:
            raise ConfigError(self.key(name), f"must be one of {', '.join(choices)}")
        return value

    def text_list(self, name: str) -> tuple[str, ...]:
        value = self._get(name)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(self.key(name), "must be a list of non-empty strings")
        return tuple(value)

    def networks(self, name: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """A list of CIDRs (a bare address is a /32 or /128)."""
        try:
            return tuple(ipaddress.ip_network(v, strict=False) for v in self.text_list(name))
        except ValueError as e:
            raise ConfigError(self.key(name), str(e)) from e

    def size(self, name: str, default: int) -> int:
        """A byte count: an integer, or a number with K, M or G (powers of 1024)."""
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, str) and (m := _SIZE.fullmatch(value.strip())):
            return int(m[1]) << 10 * " KMG".index((m[2] or " ").upper())
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        raise ConfigError(self.key(name), "must be a positive byte count such as 52428800 or 50M")

    def mapping(self, name: str) -> dict[str, Any]:
        value = self._get(name)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(self.key(name), "must be a mapping with string keys")
        return dict(value)

    def _secret_file(self, name: str, inline: object) -> str | None:
        """The text of the file named by ``name_file``, if given (never both it and
        ``name``); its empty lines do not count as content."""
        file_name = self.opt_text(f"{name}_file")
        if file_name is None:
            return None
        if inline is not None:
            raise ConfigError(self.key(name), f"give either {name} or {name}_file, not both")
        path = Path(os.path.expandvars(file_name))
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(self.key(f"{name}_file"), f"cannot read {path}: {e.strerror}") from e
        if not text.strip():
            raise ConfigError(self.key(f"{name}_file"), f"{path} is empty")
        return text

    def secret(self, name: str) -> str:
        """A secret given inline as ``name`` or in the file named by ``name_file``."""
        inline = self.opt_text(name)
        text = self._secret_file(name, inline)
        if text is not None:
            return text.strip()
        if inline is None:
            raise ConfigError(self.key(name), f"is required (or {name}_file)")
        return inline

    def secret_list(self, name: str) -> tuple[str, ...]:
        """Secrets given inline as the list ``name``, or one a line in the file ``name_file``."""
        inline = self._get(name)
        text = self._secret_file(name, inline)
        if text is not None:
            return tuple(line.strip() for line in text.splitlines() if line.strip())
        if inline is None:
            raise ConfigError(self.key(name), f"is required (or {name}_file)")
        if (
            not isinstance(inline, list)
            or not inline
            or not all(isinstance(v, str) and v for v in inline)
        ):
            raise ConfigError(self.key(name), "must be a non-empty list of non-empty strings")
        return tuple(inline)

    def finish(self) -> None:
        """Refuse unknown keys: a typo must not silently fall back to a default."""
        unknown = sorted(set(self._raw) - self._seen)
        if unknown:
            raise ConfigError(self.key(unknown[0]), "is not a known setting")


def _http_url(section: _Section, name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(section.key(name), f"must be an http(s) URL, got {value!r}")
    if parts.query or parts.fragment:
        raise ConfigError(section.key(name), "must not have a query or fragment")
    return value


def _parse_issuer(top: _Section) -> IssuerConfig:
    sec = top.section("issuer")
    issuer = _http_url(sec, "issuer", sec.text("issuer"))
    account = sec.opt_text("account_management_url")
    if account is not None:
        _http_url(sec, "account_management_url", account)
    claim = sec.text("localpart_claim", "username")
    refresh = sec.number("metadata_refresh_interval", 300.0, minimum=10.0)
    audiences = sec.text_list("audiences")
    client_ids = sec.text_list("client_ids")
    max_inflight = sec.integer("max_inflight", 64, minimum=1)
    kind = cast(IssuerKind, sec.choice("kind", ("oidc", "mas"), "oidc"))
    compat_url = _http_url(sec, "compat_url", sec.text("compat_url", issuer))
    provisioning_listen = None
    if sec.present("provisioning_listen"):
        listen_sec = sec.section("provisioning_listen")
        provisioning_listen = ListenConfig(
            host=listen_sec.text("host", "127.0.0.1"),
            port=listen_sec.integer("port", 8009, minimum=1, maximum=65535),
        )
        listen_sec.finish()

    intro = sec.section("introspection")
    auth = cast(
        IntrospectionAuth,
        intro.choice(
            "auth",
            ("client_secret_basic", "client_secret_post", "mas_shared_secret"),
            "client_secret_basic",
        ),
    )
    client_id = intro.opt_text("client_id")
    if kind == "mas" and auth != "mas_shared_secret":
        raise ConfigError(
            intro.key("auth"),
            "must be mas_shared_secret with issuer.kind: mas (MAS's matrix.secret)",
        )
    if auth != "mas_shared_secret" and client_id is None:
        raise ConfigError(intro.key("client_id"), f"is required with auth: {auth}")
    introspection = IntrospectionConfig(
        auth=auth,
        client_id=client_id,
        client_secret=intro.secret("client_secret"),
        timeout=intro.number("timeout", 10.0, minimum=0.1),
    )
    intro.finish()
    sec.finish()
    return IssuerConfig(
        issuer=issuer,
        introspection=introspection,
        kind=kind,
        compat_url=compat_url,
        provisioning_listen=provisioning_listen,
        account_management_url=account,
        localpart_claim=claim,
        metadata_refresh_interval=refresh,
        audiences=audiences,
        client_ids=client_ids,
        max_inflight=max_inflight,
    )


def _parse_homeserver(top: _Section) -> HomeserverConfig:
    sec = top.section("homeserver")
    url = _http_url(sec, "url", sec.text("url")).rstrip("/")
    strategy = sec.choice("strategy", ("device_login", "masquerade"), "device_login")
    allowlist = sec.text_list("admin_api_allowlist")
    for prefix in allowlist:
        if not prefix.startswith("/_synapse/admin/"):
            raise ConfigError(
                sec.key("admin_api_allowlist"), f"{prefix!r} must start with /_synapse/admin/"
            )
    config = HomeserverConfig(
        url=url,
        strategy=cast(Strategy, strategy),
        probe_at_start=sec.boolean("probe_at_start", True),
        connect_timeout=sec.number("connect_timeout", 10.0, minimum=0.1),
        read_timeout=sec.number("read_timeout", 60.0, minimum=1.0),
        long_poll_margin=sec.number("long_poll_margin", 15.0, minimum=1.0),
        pool_size=sec.integer("pool_size", 100, minimum=1),
        long_poll_pool_size=sec.integer("long_poll_pool_size", 10_000, minimum=1),
        admin_api_allowlist=allowlist,
        provisioning_cache_size=sec.integer("provisioning_cache_size", 100_000, minimum=1),
        provisioning_cache_ttl=sec.number("provisioning_cache_ttl", 600.0, minimum=1.0),
        admin_localpart=sec.opt_text("admin_localpart"),
        account_state_ttl=sec.number("account_state_ttl", 60.0, minimum=1.0),
    )
    if config.admin_localpart is not None and not _LOCALPART.fullmatch(config.admin_localpart):
        raise ConfigError(sec.key("admin_localpart"), "is not a valid localpart")
    sec.finish()
    return config


def _exclusive_namespaces(key: str, file_name: str) -> tuple[list[str], list[str]]:
    """The exclusive user and alias regexes of another appservice's registration file."""
    path = Path(os.path.expandvars(file_name))
    try:
        registration = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(key, f"cannot read the registration {path}: {e}") from e
    namespaces = registration.get("namespaces") if isinstance(registration, dict) else None
    if not isinstance(namespaces, dict):
        raise ConfigError(key, f"{path} is not an appservice registration (no namespaces)")
    found: dict[str, list[str]] = {"users": [], "aliases": []}
    for kind, regexes in found.items():
        for entry in namespaces.get(kind) or []:
            if isinstance(entry, dict) and entry.get("exclusive") is True:
                regex = entry.get("regex")
                try:
                    if not isinstance(regex, str):
                        raise TypeError(regex)
                    re.compile(regex)
                except (re.error, TypeError) as e:
                    raise ConfigError(key, f"{path}: {kind} regex {regex!r} is invalid") from e
                regexes.append(regex)
    return found["users"], found["aliases"]


def _parse_appservice(top: _Section) -> AppserviceConfig:
    sec = top.section("appservice")
    sender = sec.text("sender_localpart", "oidc-bridge")
    if not _LOCALPART.fullmatch(sender):
        raise ConfigError(sec.key("sender_localpart"), "must match [a-z0-9._=/+-]+")
    reserved = sec.text_list("reserved_localparts")
    for localpart in reserved:
        if not _LOCALPART.fullmatch(localpart):
            raise ConfigError(sec.key("reserved_localparts"), f"{localpart!r} is not a localpart")
    users: list[str] = []
    aliases: list[str] = []
    other_registrations = sec.text_list("other_registrations")
    for path in other_registrations:
        more_users, more_aliases = _exclusive_namespaces(sec.key("other_registrations"), path)
        users += more_users
        aliases += more_aliases
    config = AppserviceConfig(
        as_token=sec.secret("as_token"),
        hs_token=sec.secret("hs_token"),
        id=sec.text("id", "matrix-oidc-bridge"),
        sender_localpart=sender,
        reserved_localparts=reserved,
        other_registrations=other_registrations,
        exclusive_users=tuple(users),
        exclusive_aliases=tuple(aliases),
    )
    if config.as_token == config.hs_token:
        raise ConfigError(sec.key("hs_token"), "must differ from as_token")
    sec.finish()
    return config


def _parse_store(top: _Section) -> StoreConfig | None:
    if not top.present("store"):
        return None
    sec = top.section("store")
    kind = cast(StoreKind, sec.choice("kind", ("sqlite", "postgres"), "sqlite"))
    keys = sec.secret_list("encryption_keys")
    for number, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except ValueError:
            # Never chain or echo: the message would be about the key itself.
            raise ConfigError(
                sec.key("encryption_keys"),
                f"key {number} is not a Fernet key (32 bytes, urlsafe base64)",
            ) from None
    dsn: str | None = None
    path = "matrix-oidc-bridge.db"
    if kind == "sqlite":
        for name in ("dsn", "dsn_file"):
            if sec.present(name):
                raise ConfigError(sec.key(name), "is only for kind: postgres")
        path = sec.text("path", path)
    else:
        if sec.present("path"):
            raise ConfigError(sec.key("path"), "is only for kind: sqlite")
        dsn = sec.secret("dsn")
        if not dsn.startswith(("postgresql://", "postgres://")):
            raise ConfigError(sec.key("dsn"), "must be a postgresql:// URL")
    sec.finish()
    return StoreConfig(encryption_keys=keys, kind=kind, path=path, dsn=dsn)


_SIGNING_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


def _redirect_prefix(section: _Section, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            section.key("redirect_url_allowlist"), f"{value!r} must be an http(s) URL prefix"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(
            section.key("redirect_url_allowlist"),
            f"{value!r} must not have a query, fragment or user information",
        )
    return value


def _parse_login(
    top: _Section, issuer: IssuerConfig, store: StoreConfig | None
) -> LoginConfig | None:
    if not top.present("login"):
        return None
    sec = top.section("login")
    if issuer.kind != "oidc":
        raise ConfigError("login", "is only for issuer.kind: oidc (MAS serves legacy login itself)")
    if store is None:
        raise ConfigError(
            "login", "needs the store section (it keeps login tokens, sessions and logouts)"
        )
    intro = issuer.introspection
    client_id = sec.opt_text("client_id") or intro.client_id
    if client_id is None:
        raise ConfigError(sec.key("client_id"), "is required (the introspection has none)")
    explicit_secret = sec.present("client_secret") or sec.present("client_secret_file")
    client_secret = sec.secret("client_secret") if explicit_secret else intro.client_secret
    default_auth = intro.auth if intro.auth != "mas_shared_secret" else "client_secret_basic"
    client_auth = sec.choice(
        "client_auth", ("client_secret_basic", "client_secret_post"), default_auth
    )
    allowlist = tuple(_redirect_prefix(sec, v) for v in sec.text_list("redirect_url_allowlist"))
    algorithms = sec.text_list("signing_algorithms") or LoginConfig.signing_algorithms
    for alg in algorithms:
        if alg not in _SIGNING_ALGORITHMS:
            raise ConfigError(
                sec.key("signing_algorithms"),
                f"{alg!r} is not an asymmetric JWS algorithm (none and HMAC are never accepted)",
            )
    config = LoginConfig(
        client_id=client_id,
        client_secret=client_secret,
        client_auth=cast(Literal["client_secret_basic", "client_secret_post"], client_auth),
        redirect_url_allowlist=allowlist,
        extra_scopes=sec.text_list("extra_scopes"),
        idp_id=sec.text("idp_id", "oidc"),
        idp_name=sec.text("idp_name", "Single sign-on"),
        flow_ttl=sec.number("flow_ttl", 600.0, minimum=30.0),
        login_token_ttl=sec.number("login_token_ttl", 120.0, minimum=5.0),
        password_grant=sec.boolean("password_grant", False),
        logout_retention=sec.number("logout_retention", 7 * 86400.0, minimum=60.0),
        sync_interval=sec.number("sync_interval", 1.0, minimum=0.05),
        signing_algorithms=algorithms,
    )
    if not re.fullmatch(r"[A-Za-z0-9._~-]{1,64}", config.idp_id):
        raise ConfigError(sec.key("idp_id"), "must be 1 to 64 of A-Z a-z 0-9 . _ ~ -")
    sec.finish()
    return config


def parse_config(raw: object) -> BridgeConfig:
    """Validate an already-loaded YAML document into a :class:`BridgeConfig`."""
    top = _Section(raw, "")
    server_name = top.text("server_name")
    if not _SERVER_NAME.fullmatch(server_name):
        raise ConfigError("server_name", f"{server_name!r} is not a valid Matrix server name")
    public_baseurl = _http_url(top, "public_baseurl", top.text("public_baseurl"))

    listen_sec = top.section("listen", required=False)
    listen = ListenConfig(
        host=listen_sec.text("host", "127.0.0.1"),
        port=listen_sec.integer("port", 8008, minimum=0, maximum=65535),
        workers=listen_sec.integer("workers", 1, minimum=1, maximum=256),
        trusted_proxies=listen_sec.networks("trusted_proxies"),
        max_request_body=listen_sec.size("max_request_body", 50 * 1024 * 1024),
    )
    listen_sec.finish()

    cache_sec = top.section("token_cache", required=False)
    token_cache = TokenCacheConfig(
        max_size=cache_sec.integer("max_size", 10_000, minimum=1),
        max_ttl=cache_sec.number("max_ttl", 300.0, minimum=1.0),
        negative_ttl=cache_sec.number("negative_ttl", 10.0),
        negative_max_size=cache_sec.integer("negative_max_size", 10_000, minimum=1),
    )
    cache_sec.finish()

    wk_sec = top.section("well_known", required=False)
    well_known = WellKnownConfig(
        server=wk_sec.opt_text("server"), client_extra=wk_sec.mapping("client_extra")
    )
    reserved = {"m.homeserver", "m.authentication", "org.matrix.msc2965.authentication"}
    clash = reserved & set(well_known.client_extra)
    if clash:
        raise ConfigError("well_known.client_extra", f"must not set {sorted(clash)[0]}")
    wk_sec.finish()

    homeserver = _parse_homeserver(top)
    appservice = _parse_appservice(top)
    issuer = _parse_issuer(top)
    store = _parse_store(top)
    config = BridgeConfig(
        server_name=server_name,
        public_baseurl=public_baseurl,
        homeserver=homeserver,
        appservice=appservice,
        issuer=issuer,
        listen=listen,
        token_cache=token_cache,
        well_known=well_known,
        store=store,
        login=_parse_login(top, issuer, store),
    )
    if config.homeserver.strategy == "device_login" and config.store is None:
        raise ConfigError(
            "store", "is required with homeserver.strategy: device_login (it keeps the tokens)"
        )
    top.finish()
    return config


def load_config(path: Path) -> BridgeConfig:
    """Read and validate the YAML file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError("(file)", f"cannot read {path}: {e.strerror}") from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("(file)", f"{path} is not valid YAML: {e}") from e
    return parse_config(raw)
