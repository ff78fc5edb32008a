"""``matrix-oidc-bridge doctor -c FILE``: the set-up checked step by step, in plain words.

Each check prints one line, ``✓`` or ``✗``, and under a ``✗`` a hint to fix it;
a check that needs an earlier one that failed is skipped (``-``). In order:

1. the config file is valid;
2. the issuer's discovery document is reachable and names the configured issuer;
3. its JWKS is reachable (JWT access tokens only);
4. the introspection credentials are accepted (a made-up token introspects as
   ``active: false``, not 401);
5. the homeserver answers, and which spec versions it speaks;
6. it accepts the bridge's ``as_token`` (appservice ``whoami``);
7. which identity strategies it supports, and whether the configured one is
   among them (5 to 7 are the start-up probe's steps, which create and remove a
   device of the appservice's own user);
8. ``/.well-known/matrix/client`` and ``auth_metadata`` as clients see them at
   ``public_baseurl`` (the bridge must be running and routed there).

The exit code is 0 when every check passed, 11 for an invalid config file,
else 1. Nothing printed holds a secret.
"""

from __future__ import annotations

import logging
import secrets
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from bridge import USER_AGENT
from bridge.config import BridgeConfig, load_config
from bridge.errors import ConfigError
from bridge.homeserver.probe import Probe, ProbeFailed
from bridge.issuer.http import IssuerHTTP, client_auth
from bridge.issuer.introspection import TOKEN_ERRORS
from bridge.issuer.limit import InflightLimit
from bridge.issuer.metadata import DiscoveryFailed, IssuerMetadata, IssuerMismatch, discovery_url
from bridge.ops.metrics import Metrics
from bridge.runtime.clock import SYSTEM_CLOCK

EXIT_FAILED = 1
EXIT_CONFIG = 11
PASS, FAIL, SKIP = "✓", "✗", "-"


class CheckFailed(Exception):
    """A check's ✗: what is wrong, and a hint to fix it."""

    def __init__(self, problem: str, hint: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.hint = hint


@dataclass
class Findings:
    """What the checks learnt, for the checks after them."""

    discovery: Mapping[str, Any] | None = None
    versions: tuple[str, ...] | None = None
    as_token_ok: bool = False


def _failed(error: BaseException, what: str, url: str, hint: str, answered: str) -> CheckFailed:
    """The ✗ of a failed request: unreachable, named by aiohttp's error (or the timeout)
    behind ``error``; else ``answered``, what its answer was."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, aiohttp.ClientError | TimeoutError):
        cause = cause.__cause__
    if cause is None:
        return CheckFailed(answered, hint)
    return CheckFailed(f"{what} is unreachable at {url} ({type(cause).__name__})", hint)


def jwt_access_tokens(config: BridgeConfig) -> bool:
    """Whether the bridge validates JWT access tokens itself (RFC 9068), alone or before
    introspection (``issuer.validation``)."""
    return config.issuer.validation != "introspection"


class Doctor:
    """Runs the checks against ``config`` with ``session`` and prints to ``out``."""

    def __init__(self, config: BridgeConfig, session: aiohttp.ClientSession, out: TextIO) -> None:
        self.config = config
        self.session = session
        self.out = out
        self.probe = Probe(session, config)
        self.found = Findings()
        self.failed = False

    def line(self, mark: str, text: str, hint: str | None = None) -> None:
        print(f"{mark} {text}", file=self.out)
        if hint:
            print(f"    hint: {hint}", file=self.out)
        self.out.flush()

    async def check(
        self, name: str, run: Callable[[], Awaitable[str]], *, needs: str | None = None
    ) -> None:
        if needs is not None:
            self.line(SKIP, f"{name}: skipped ({needs})")
            return
        try:
            detail = await run()
        except CheckFailed as e:
            self.failed = True
            self.line(FAIL, f"{name}: {e.problem}", e.hint)
        else:
            self.line(PASS, f"{name}: {detail}")

    async def run(self) -> None:
        found = self.found
        await self.check("issuer discovery", self.discovery)
        no_discovery = None if found.discovery else "the issuer's discovery failed"
        if jwt_access_tokens(self.config):
            await self.check("issuer JWKS", self.jwks, needs=no_discovery)
        else:
            self.line(SKIP, "issuer JWKS: not used (opaque access tokens, by introspection)")
        if self.config.issuer.introspection is not None:
            await self.check("introspection credentials", self.introspection, needs=no_discovery)
        else:
            self.line(SKIP, "introspection credentials: not used (validation: jwt)")
        await self.check("homeserver", self.homeserver)
        no_homeserver = None if found.versions is not None else "the homeserver is unreachable"
        await self.check("appservice as_token", self.as_token, needs=no_homeserver)
        no_as_token = None if found.as_token_ok else "the homeserver refuses the as_token"
        await self.check("identity strategy", self.strategy, needs=no_homeserver or no_as_token)
        await self.check("well-known at the public base URL", self.well_known)
        await self.check("auth_metadata at the public base URL", self.auth_metadata)

    # -- the checks ---------------------------------------------------------------------

    async def _get_json(self, url: str, what: str, hint: str, **kwargs: Any) -> tuple[int, Any]:
        try:
            async with self.session.get(url, allow_redirects=False, **kwargs) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                return resp.status, body
        except (aiohttp.ClientError, TimeoutError) as e:
            raise CheckFailed(f"{what} is unreachable at {url} ({type(e).__name__})", hint) from e

    async def discovery(self) -> str:
        issuer = self.config.issuer.issuer
        url = discovery_url(issuer)
        hint = f"is the issuer running, and reachable from this host? (issuer.issuer: {issuer})"
        try:
            # Counted in metrics of its own, which no one scrapes; discovery takes no slot.
            config = self.config.issuer
            http = IssuerHTTP(
                self.session, InflightLimit(1), Metrics(), SYSTEM_CLOCK, config.timeout
            )
            metadata = await IssuerMetadata(http, config).fetch()
        except IssuerMismatch as e:
            raise CheckFailed(
                f"the document names issuer {e.named!r}, configured {issuer!r}",
                f"set issuer.issuer to exactly {e.named!r} (the trailing slash counts)",
            ) from e
        except DiscoveryFailed as e:
            answered = f"{url} answered HTTP {e.answered}, not a discovery document"
            raise _failed(e, "the discovery document", url, hint, answered) from e
        self.found.discovery = metadata.document
        return f"{url} answers, and names {issuer}"

    async def jwks(self) -> str:
        assert self.found.discovery is not None
        url = self.found.discovery.get("jwks_uri")
        hint = "the issuer must publish its signing keys (jwks_uri) for JWT access tokens"
        if not isinstance(url, str):
            raise CheckFailed("the discovery document has no jwks_uri", hint)
        status, jwks = await self._get_json(url, "the JWKS", hint)
        keys = jwks.get("keys") if isinstance(jwks, dict) else None
        if status != 200 or not isinstance(keys, list) or not keys:
            raise CheckFailed(f"{url} answered HTTP {status} without keys", hint)
        return f"{url} lists {len(keys)} keys"

    async def introspection(self) -> str:
        assert self.found.discovery is not None
        url = self.found.discovery.get("introspection_endpoint")
        cfg = self.config.issuer.introspection
        assert cfg is not None  # checked by run
        if not isinstance(url, str):
            raise CheckFailed(
                "the discovery document has no introspection_endpoint",
                "the issuer must offer RFC 7662 introspection to the bridge",
            )
        headers, form = client_auth(cfg.auth, cfg.client_id, cfg.client_secret)
        made_up = "matrix-oidc-bridge-doctor-" + secrets.token_urlsafe(16)
        who = "MAS's shared secret" if cfg.auth == "mas_shared_secret" else cfg.client_id
        hint = (
            "check issuer.introspection.client_secret (MAS: matrix.secret)"
            if cfg.auth == "mas_shared_secret"
            else f"check issuer.introspection.client_id ({cfg.client_id}) and client_secret, "
            f"and that the issuer accepts auth: {cfg.auth} for that client"
        )
        try:
            async with self.session.post(
                url,
                data={"token": made_up, "token_type_hint": "access_token", **form},
                headers=headers,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                try:
                    answer = await resp.json(content_type=None)
                except ValueError:
                    answer = None
        except (aiohttp.ClientError, TimeoutError) as e:
            raise CheckFailed(f"{url} is unreachable ({type(e).__name__})", hint) from e
        error = answer.get("error") if isinstance(answer, dict) else None
        if status == 400 and error in TOKEN_ERRORS:
            # The issuer judged the token, not the caller: the bridge reads it as inactive.
            return f"accepted ({who}, {cfg.auth}): a made-up token is refused ({error})"
        if status in (400, 401, 403):
            raise CheckFailed(
                f"the issuer refused the bridge's credentials ({who}): HTTP {status}", hint
            )
        if status != 200 or not isinstance(answer, dict) or answer.get("active") is not False:
            raise CheckFailed(
                f"a made-up token did not introspect as inactive (HTTP {status})",
                "the introspection endpoint must answer RFC 7662 JSON",
            )
        return f"accepted ({who}, {cfg.auth}): a made-up token is inactive"

    async def homeserver(self) -> str:
        url = self.config.homeserver.url + "/_matrix/client/versions"
        hint = f"is the homeserver running at homeserver.url ({self.config.homeserver.url})?"
        try:
            versions = await self.probe.versions()
        except ProbeFailed as e:
            answered = f"{url} answered HTTP {e.status}, not a versions list"
            raise _failed(e, "the homeserver", url, hint, answered) from e
        if versions is None:
            raise CheckFailed(f"{url} answered HTTP 200, not a versions list", hint)
        self.found.versions = versions
        return f"{self.config.homeserver.url} speaks {', '.join(versions) or 'no spec version'}"

    async def as_token(self) -> str:
        url = self.config.homeserver.url + "/_matrix/client/v3/account/whoami"
        hint = (
            "the homeserver must load the bridge's registration: "
            "matrix-oidc-bridge generate-registration -c FILE -o registration.yaml, add it "
            "(Synapse: app_service_config_files) and restart the homeserver"
        )
        try:
            await self.probe.check_as_token()
        except ProbeFailed as e:
            answered = f"the homeserver does not accept the as_token (HTTP {e.status} {e.errcode})"
            raise _failed(e, "the homeserver", url, hint, answered.strip()) from e
        self.found.as_token_ok = True
        return f"accepted as {self.probe.sender}"

    async def strategy(self) -> str:
        configured = self.config.homeserver.strategy
        assert self.found.versions is not None  # checked by run
        try:
            result = await self.probe.result(self.found.versions)
        except ProbeFailed as e:
            raise CheckFailed(str(e), "see the homeserver's log for the refused request") from e
        if configured not in result.strategies:
            raise CheckFailed(
                f"{configured} cannot work: {result.why_not(configured)}",
                f"use homeserver.strategy: {result.strategies[0]}"
                if result.strategies
                else "this homeserver supports neither strategy through the appservice",
            )
        return f"{configured} works (supported: {', '.join(result.strategies)})"

    def _public(self, path: str) -> str:
        return self.config.public_baseurl.rstrip("/") + path

    async def well_known(self) -> str:
        url = self._public("/.well-known/matrix/client")
        hint = (
            f"serve the bridge at public_baseurl ({self.config.public_baseurl}): route it, "
            "and /.well-known/matrix/client on the server name's domain, to the bridge"
        )
        status, document = await self._get_json(url, "the well-known file", hint)
        if status != 200 or not isinstance(document, dict):
            raise CheckFailed(f"{url} answered HTTP {status}", hint)
        base = (document.get("m.homeserver") or {}).get("base_url")
        authentication = document.get("m.authentication") or {}
        if str(base).rstrip("/") != self.config.public_baseurl.rstrip("/"):
            raise CheckFailed(f"m.homeserver.base_url is {base!r}", hint)
        if authentication.get("issuer") != self.config.issuer.issuer:
            raise CheckFailed(
                f"m.authentication.issuer is {authentication.get('issuer')!r}",
                "another server answers the well-known file: route it to the bridge",
            )
        return f"{url} names {base} and the issuer"

    async def auth_metadata(self) -> str:
        url = self._public("/_matrix/client/v1/auth_metadata")
        hint = f"route {self.config.public_baseurl}_matrix/ to the bridge"
        status, document = await self._get_json(url, "auth_metadata", hint)
        if status != 200 or not isinstance(document, dict):
            raise CheckFailed(f"{url} answered HTTP {status}", hint)
        if document.get("issuer") != self.config.issuer.issuer:
            raise CheckFailed(f"it names issuer {document.get('issuer')!r}", hint)
        return f"{url} serves the issuer's metadata"


async def doctor_cli(config_path: Path, out: TextIO | None = None) -> int:
    """Run every check; the exit code."""
    out = out or sys.stdout
    try:
        config = load_config(config_path)
    except ConfigError as e:
        print(f"{FAIL} config {config_path}: {len(e.problems)} problem(s)", file=out)
        for line in e.lines():
            print(f"    {line}", file=out)
        print("    hint: `matrix-oidc-bridge config-schema` describes every key", file=out)
        return EXIT_CONFIG
    print(f"{PASS} config {config_path}: valid", file=out)
    # The probe's calls log a homeserver they cannot reach: the checks say so already.
    homeserver_log = logging.getLogger("bridge.homeserver")
    was_disabled, homeserver_log.disabled = homeserver_log.disabled, True
    try:
        async with aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT},
            timeout=aiohttp.ClientTimeout(total=15),
        ) as session:
            doctor = Doctor(config, session, out)
            await doctor.run()
    finally:
        homeserver_log.disabled = was_disabled
    return EXIT_FAILED if doctor.failed else 0
