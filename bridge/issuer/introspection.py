"""RFC 7662 token introspection at the issuer."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import aiohttp

from bridge.config import IntrospectionConfig
from bridge.errors import IssuerUnavailable
from bridge.issuer.limit import InflightLimit
from bridge.issuer.metadata import IssuerMetadata
from bridge.ops.metrics import Metrics

log = logging.getLogger("bridge.issuer")


def client_auth(
    auth: str, client_id: str | None, client_secret: str
) -> tuple[dict[str, str], dict[str, str]]:
    """The headers and form fields that authenticate the bridge to the issuer's
    endpoints (introspection; the login client's token and revocation calls)."""
    headers = {"Accept": "application/json"}
    if auth == "mas_shared_secret":
        headers["Authorization"] = f"Bearer {client_secret}"
        headers["X-MAS-Supports-Device-Id"] = "1"
        return headers, {}
    assert client_id is not None  # checked by the config
    if auth == "client_secret_post":
        return headers, {"client_id": client_id, "client_secret": client_secret}
    # RFC 6749 §2.3.1: both parts form-urlencoded before the Basic encoding.
    headers["Authorization"] = aiohttp.encode_basic_auth(
        quote(client_id, safe=""), quote(client_secret, safe="")
    )
    return headers, {}


class Introspector:
    """Asks the issuer about one token, authenticating as configured.

    Any answer other than a 200 JSON object is the issuer's failure, not the
    token's: it raises :class:`IssuerUnavailable` (503), never a 401. The one
    exception is a 400 saying the token itself is unusable (RFC 7009 §2.2.1's
    ``unsupported_token_type``, as oidc-provider answers for JWT access
    tokens, or ``invalid_token``): that token is simply not active.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        metadata: IssuerMetadata,
        config: IntrospectionConfig,
        limit: InflightLimit,
        metrics: Metrics | None = None,
    ) -> None:
        self._session = session
        self._metrics = metrics if metrics is not None else Metrics()
        self._metadata = metadata
        self._limit = limit
        self._config = config
        self._timeout = aiohttp.ClientTimeout(total=self._config.timeout)
        self._headers, self._form_auth = client_auth(
            config.auth, config.client_id, config.client_secret
        )

    async def introspect(self, token: str) -> dict[str, Any]:
        """Return the introspection response (``active`` may be false)."""
        endpoint = self._metadata.require().endpoint("introspection_endpoint")
        if endpoint is None:
            raise IssuerUnavailable("The issuer advertises no introspection_endpoint")
        form = {"token": token, "token_type_hint": "access_token", **self._form_auth}
        with self._limit.slot(), self._metrics.issuer_call("introspection") as call:
            try:
                async with self._session.post(
                    endpoint,
                    data=form,
                    headers=self._headers,
                    timeout=self._timeout,
                    allow_redirects=False,
                ) as resp:
                    call.status = resp.status
                    if resp.status == 400 and await _token_refused(resp):
                        return {"active": False}
                    if resp.status != 200:
                        # 401 here means the bridge's own credentials are wrong: an
                        # admin problem, which must not log every user out.
                        log.error("introspection answered HTTP %s", resp.status)
                        raise IssuerUnavailable(
                            "The authentication service refused introspection",
                            retry_after=retry_after(resp),
                        )
                    answer = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                log.warning("introspection failed: %s", type(e).__name__)
                raise IssuerUnavailable("The authentication service is unreachable") from e
            if not isinstance(answer, dict) or not isinstance(answer.get("active"), bool):
                raise IssuerUnavailable("The authentication service gave a malformed answer")
        return answer


def retry_after(resp: aiohttp.ClientResponse) -> int:
    """The issuer's own ``Retry-After`` (seconds, on a 429 or 503) passed on to the
    client when it is sane (1 s to 5 min); 5 s otherwise."""
    value = resp.headers.get("Retry-After", "")
    return int(value) if value.isdigit() and 1 <= int(value) <= 300 else 5


# OAuth error codes (RFC 6750 §3.1, RFC 7009 §2.2.1) that judge the token, not the caller.
TOKEN_ERRORS = frozenset({"invalid_token", "unsupported_token_type"})


async def _token_refused(resp: aiohttp.ClientResponse) -> bool:
    """Whether a 400 from the issuer says the token itself is malformed or unsupported."""
    try:
        answer = await resp.json(content_type=None)
    except ValueError:
        return False
    return isinstance(answer, dict) and answer.get("error") in TOKEN_ERRORS
