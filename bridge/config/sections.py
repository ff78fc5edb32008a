"""The sections of the config file, one frozen model each, and :class:`BridgeConfig`,
the whole file.

A field's docstring is its description in the JSON Schema. A rule across fields goes
in its section's ``model_validator(mode="after")``, raising :class:`SettingError` to
name the key; a rule across sections, in :class:`BridgeConfig`'s.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from cryptography.fernet import Fernet
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from bridge.config.files import exclusive_namespaces, secret_schema, secrets_from_files
from bridge.config.types import (
    DEFAULT_ALGORITHMS,
    LOCALPART,
    ByteSize,
    Count,
    Flag,
    HttpURL,
    IntrospectionAuth,
    IssuerKind,
    JwtAlgorithms,
    Localpart,
    LogFormat,
    LogLevel,
    NetworkSetting,
    Port,
    RedirectPrefix,
    Seconds,
    Section,
    SettingError,
    SigningAlgorithm,
    StoreKind,
    Strategy,
    Text,
    Validation,
)

# Matrix server names: a hostname or IP literal with an optional port (spec appendix).
_SERVER_NAME = re.compile(r"^(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,255})(?::[0-9]{1,5})?$")


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

    model_config = ConfigDict(json_schema_extra=secret_schema("as_token", "hs_token"))

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
        return secrets_from_files(data, ("as_token", "hs_token"))

    @field_validator("reserved_localparts")
    @classmethod
    def _reserved_are_localparts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for localpart in value:
            if not LOCALPART.fullmatch(localpart):
                raise ValueError(f"{localpart!r} is not a localpart")
        return value

    @model_validator(mode="after")
    def _checks(self) -> AppserviceConfig:
        if self.as_token == self.hs_token:
            raise SettingError("hs_token", "must differ from as_token")
        users: list[str] = []
        aliases: list[str] = []
        for path in self.other_registrations:
            more_users, more_aliases = exclusive_namespaces(path)
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

    model_config = ConfigDict(json_schema_extra=secret_schema("client_secret"))

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
        return secrets_from_files(data, ("client_secret",))

    @model_validator(mode="after")
    def _checks(self) -> IntrospectionConfig:
        if self.auth != "mas_shared_secret" and self.client_id is None:
            raise SettingError("client_id", f"is required with auth: {self.auth}")
        return self


class JwtConfig(Section):
    """RFC 9068 JWT access tokens, checked against the issuer's JWKS (``jwks_uri``)."""

    algorithms: JwtAlgorithms = DEFAULT_ALGORITHMS
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

    model_config = ConfigDict(json_schema_extra=secret_schema("encryption_keys"))

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
        return secrets_from_files(data, ("dsn",), lists=("encryption_keys",))

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
    redirect_url_allowlist: tuple[RedirectPrefix, ...] = ()
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
    signing_algorithms: tuple[SigningAlgorithm, ...] = DEFAULT_ALGORITHMS
    """Signature algorithms accepted on ID tokens and logout tokens."""

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        return secrets_from_files(data, ("client_secret",))

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
