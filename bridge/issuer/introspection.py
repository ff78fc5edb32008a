"""RFC 7662 token introspection at the issuer."""

from __future__ import annotations

from typing import Any

import aiohttp

from bridge.config import IntrospectionConfig
from bridge.errors import IssuerUnavailable
from bridge.issuer.http import IssuerHTTP, client_auth, unreachable
from bridge.issuer.metadata import IssuerMetadata

_UNREACHABLE = unreachable("introspection", "The authentication service is unreachable")


class Introspector:
    """Asks the issuer about one token, authenticating as configured.

    Any answer other than a 200 JSON object is the issuer's failure, not the
    token's: it raises :class:`IssuerUnavailable` (503), never a 401. The one
    exception is a 400 saying the token itself is unusable (RFC 7009 §2.2.1's
    ``unsupported_token_type``, as oidc-provider answers for JWT access
    tokens, or ``invalid_token``): that token is simply not active.
    """

    def __init__(
        self, http: IssuerHTTP, metadata: IssuerMetadata, config: IntrospectionConfig
    ) -> None:
        self._http = http
        self._metadata = metadata
        self._timeout = config.timeout
        self._auth = client_auth(config.auth, config.client_id, config.client_secret)

    async def introspect(self, token: str) -> dict[str, Any]:
        """Return the introspection response (``active`` may be false)."""
        endpoint = self._metadata.require().endpoint("introspection_endpoint")
        if endpoint is None:
            raise IssuerUnavailable("The issuer advertises no introspection_endpoint")
        async with self._http.call(
            "introspection",
            endpoint,
            form={"token": token, "token_type_hint": "access_token"},
            auth=self._auth,
            within=self._timeout,
            unreachable=_UNREACHABLE,
        ) as answer:
            if answer.status == 400 and await _token_refused(answer.response):
                return {"active": False}
            if answer.status != 200:
                # 401 here means the bridge's own credentials are wrong: an
                # admin problem, which must not log every user out.
                raise answer.refused(
                    "introspection", "The authentication service refused introspection"
                )
            claims = await answer.response.json(content_type=None)
            if not isinstance(claims, dict) or not isinstance(claims.get("active"), bool):
                raise IssuerUnavailable("The authentication service gave a malformed answer")
        return claims


# OAuth error codes (RFC 6750 §3.1, RFC 7009 §2.2.1) that judge the token, not the caller.
TOKEN_ERRORS = frozenset({"invalid_token", "unsupported_token_type"})


async def _token_refused(resp: aiohttp.ClientResponse) -> bool:
    """Whether a 400 from the issuer says the token itself is malformed or unsupported."""
    try:
        answer = await resp.json(content_type=None)
    except ValueError:
        return False
    return isinstance(answer, dict) and answer.get("error") in TOKEN_ERRORS
