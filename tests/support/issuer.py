"""A real OIDC issuer for tests (oidc-provider on Node, ``tests/oidc-provider``) and a login.

``start_issuer()`` runs ``node tests/oidc-provider/server.mjs`` on 127.0.0.1 with a confidential
"bridge" client allowed to introspect and revoke every token (client_secret_basic or
client_secret_post, same credentials). The issuer string has a trailing slash:
``http://127.0.0.1:<port>/``. With ``access_token_format="jwt"`` it issues RFC 9068 JWT
access tokens signed with ``access_token_alg`` (RS256 or ES256), and can rotate its keys
while it runs (:meth:`TestIssuer.rotate_keys`, :meth:`TestIssuer.retire_keys`).

``obtain_token()`` logs in the way a Matrix client does (MSC2966 dynamic registration, then
authorization code + PKCE through the issuer's development login and consent forms).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import aiohttp

from tests.support.net import free_port, wait_http

ISSUER_DIR = Path(__file__).resolve().parent.parent / "oidc-provider"
# Nothing listens there: the redirect to it is read from the Location header, not followed.
REDIRECT_URI = "http://127.0.0.1:8123/callback"
_FORM_ACTION = re.compile(r'<form[^>]*\baction="([^"]+)"')
_FORM_PROMPT = re.compile(r'name="prompt" value="([^"]+)"')


def _new_log_path() -> Path:
    fd, path = tempfile.mkstemp(prefix="test-issuer-", suffix=".log")
    os.close(fd)
    return Path(path)


@dataclass
class TestIssuer:
    """A running (or stopped) oidc-provider process listening on 127.0.0.1:``port``."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    url: str
    port: int
    bridge_client_id: str
    bridge_client_secret: str
    access_token_format: str = "opaque"
    access_token_alg: str = "RS256"
    access_token_ttl: int = 3600
    # Introspection also accepts ``Authorization: Bearer <this>``, as MAS accepts its
    # matrix.secret (bridges with ``issuer.kind: mas``).
    mas_shared_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    log_path: Path = field(default_factory=_new_log_path)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        """(Re)start the node process on the same port and wait until discovery answers."""
        if self._proc is not None and self._proc.poll() is None:
            return
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not on PATH; the test issuer needs Node.js")
        env = {
            **os.environ,
            "ISSUER_PORT": str(self.port),
            "ISSUER_URL": self.url,
            "BRIDGE_CLIENT_ID": self.bridge_client_id,
            "BRIDGE_CLIENT_SECRET": self.bridge_client_secret,
            "ACCESS_TOKEN_FORMAT": self.access_token_format,
            "ACCESS_TOKEN_ALG": self.access_token_alg,
            "ACCESS_TOKEN_TTL": str(self.access_token_ttl),
            "MAS_SHARED_SECRET": self.mas_shared_secret,
        }
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [node, "server.mjs"], cwd=ISSUER_DIR, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        proc = self._proc
        try:
            wait_http(
                f"{self._base}/.well-known/openid-configuration",
                timeout=30,
                is_alive=lambda: proc.poll() is None,
            )
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(
                f"test issuer did not start: {exc}\n{self.log_path.read_text(errors='replace')}"
            ) from exc

    def stop(self) -> None:
        """Send SIGTERM, wait, and kill the process if it does not exit in time."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def counters(self) -> dict[str, int]:
        """The issuer's request counters since start or last reset."""
        with urllib.request.urlopen(f"{self._base}/_test/counters", timeout=5) as resp:
            return {k: int(v) for k, v in json.load(resp).items()}

    def introspection_count(self) -> int:
        """Number of introspection requests the issuer received since start or last reset."""
        return self.counters()["introspection"]

    def jwks_count(self) -> int:
        """Number of JWKS requests the issuer received since start or last reset."""
        return self.counters()["jwks"]

    def reset_counters(self) -> None:
        """Set the issuer's request counters back to zero."""
        request = urllib.request.Request(f"{self._base}/_test/counters/reset", method="POST")
        with urllib.request.urlopen(request, timeout=5):
            pass

    def rotate_keys(self) -> str:
        """Publish a new signing key (first) and sign every access token with it from now
        on; the old keys stay published. Returns the new key's kid."""
        return str(self._post("/_test/keys/rotate")["kid"])

    def retire_keys(self) -> list[str]:
        """Unpublish every key of the access-token algorithm but the signing one; the
        kids still published."""
        return [str(kid) for kid in self._post("/_test/keys/retire")["kids"]]

    def _post(self, path: str) -> dict[str, Any]:
        request = urllib.request.Request(f"{self._base}{path}", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=10) as resp:
            answer: dict[str, Any] = json.load(resp)
            return answer

    @property
    def _base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_issuer(
    *,
    access_token_format: str = "opaque",  # noqa: S107 - a format name, not a secret
    port: int | None = None,
    access_token_ttl: int = 3600,
    access_token_alg: str = "RS256",  # noqa: S107 - an algorithm name
) -> TestIssuer:
    """Start the test issuer and return it once its discovery document answers."""
    if not (ISSUER_DIR / "node_modules" / "oidc-provider").is_dir():
        raise RuntimeError(
            f"{ISSUER_DIR}/node_modules is missing: "
            "run `make test` or `npm ci --prefix tests/oidc-provider`"
        )
    port = port or free_port()
    issuer = TestIssuer(
        url=f"http://127.0.0.1:{port}/",
        port=port,
        bridge_client_id="matrix-oidc-bridge",
        bridge_client_secret=secrets.token_urlsafe(32),
        access_token_format=access_token_format,
        access_token_alg=access_token_alg,
        access_token_ttl=access_token_ttl,
    )
    issuer.start()
    return issuer


@dataclass(frozen=True)
class TokenSet:
    """The token endpoint's answer, as a Matrix client keeps it."""

    access_token: str
    refresh_token: str | None
    expires_in: int
    scope: str


async def _json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    body = await resp.text()
    if resp.status >= 400:
        raise RuntimeError(f"{resp.method} {resp.url} -> {resp.status}: {body}")
    data: dict[str, Any] = json.loads(body)
    return data


async def obtain_token(
    session: aiohttp.ClientSession,
    issuer_url: str,
    *,
    username: str,
    device_id: str | None,
    unstable_scopes: bool = False,
    extra_scopes: tuple[str, ...] = (),
) -> TokenSet:
    """Register a public client and log ``username`` in with authorization code + PKCE.

    ``session`` makes the client's API calls (discovery, registration, token); a private
    session with its own cookie jar plays the user's browser.
    """
    prefix = "urn:matrix:org.matrix.msc2967.client" if unstable_scopes else "urn:matrix:client"
    scopes = [
        "openid",
        f"{prefix}:api:*",
        *([f"{prefix}:device:{device_id}"] if device_id else []),
        *extra_scopes,
    ]

    async with session.get(issuer_url.rstrip("/") + "/.well-known/openid-configuration") as resp:
        meta = await _json(resp)
    registration = {
        "client_name": f"test client for {username}",
        "application_type": "native",
        "redirect_uris": [REDIRECT_URI],
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
    }
    async with session.post(meta["registration_endpoint"], json=registration) as resp:
        client_id = str((await _json(resp))["client_id"])

    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    state = secrets.token_urlsafe(16)
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT_URI,
        "scope": " ".join(scopes),
        "state": state,
        "nonce": secrets.token_urlsafe(16),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    code = await _drive_browser(f"{meta['authorization_endpoint']}?{urlencode(query)}", username)
    if code[1] != state:
        raise RuntimeError(f"state mismatch: sent {state!r}, got {code[1]!r}")

    form = {
        "grant_type": "authorization_code",
        "code": code[0],
        "redirect_uri": REDIRECT_URI,
        "client_id": client_id,
        "code_verifier": verifier,
    }
    async with session.post(meta["token_endpoint"], data=form) as resp:
        tokens = await _json(resp)
    return TokenSet(
        access_token=str(tokens["access_token"]),
        refresh_token=tokens.get("refresh_token"),
        expires_in=int(tokens["expires_in"]),
        scope=str(tokens.get("scope", "")),
    )


async def _drive_browser(url: str, username: str) -> tuple[str, str]:
    """Follow the authorization request through login and consent; return (code, state)."""
    jar = aiohttp.CookieJar(unsafe=True)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(cookie_jar=jar, timeout=timeout) as browser:
        method: str = "GET"
        data: dict[str, str] | None = None
        for _ in range(20):
            async with browser.request(method, url, data=data, allow_redirects=False) as resp:
                body = await resp.text()
                location = resp.headers.get("Location")
            if location is not None:
                url, method, data = urljoin(url, location), "GET", None
                if url.startswith(REDIRECT_URI):
                    params = parse_qs(urlsplit(url).query)
                    if "code" not in params:
                        raise RuntimeError(f"authorization failed: {params}")
                    return params["code"][0], params.get("state", [""])[0]
                continue
            action, prompt = _FORM_ACTION.search(body), _FORM_PROMPT.search(body)
            if resp.status != 200 or action is None or prompt is None:
                raise RuntimeError(f"unexpected page at {url} ({resp.status}): {body[:500]}")
            url, method = urljoin(url, html.unescape(action.group(1))), "POST"
            if prompt.group(1) == "login":
                data = {"prompt": "login", "login": username, "password": "any password"}
            else:
                data = {"prompt": prompt.group(1)}
    raise RuntimeError("authorization flow did not reach the redirect URI")
