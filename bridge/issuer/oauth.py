"""The bridge as a confidential OAuth client of the issuer (the legacy login layer).

- the authorization request: code + PKCE (S256), ``state`` and ``nonce``
  (:func:`pkce_pair`, :meth:`OAuthClient.authorization_url`);
- the token endpoint (RFC 6749 §4.1.3 code, §6 refresh, §4.3 password);
- revocation (RFC 7009).

Client authentication is ``client_secret_basic`` or ``client_secret_post``.
An issuer that refuses a grant (400 ``invalid_grant`` and the like) raises
:class:`GrantRefused`; one that cannot answer raises
:class:`~bridge.errors.IssuerUnavailable`. Nothing here logs a token, a code,
a verifier or a secret.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode

from bridge.errors import IssuerUnavailable
from bridge.issuer.http import ClientAuth, IssuerHTTP, unreachable
from bridge.issuer.metadata import IssuerMetadata

log = logging.getLogger("bridge.issuer")

T = TypeVar("T")


def pkce_pair() -> tuple[str, str]:
    """A fresh PKCE code verifier (RFC 7636 §4.1: 43 to 128 characters) and its S256
    challenge."""
    verifier = secrets.token_urlsafe(48)  # 64 characters
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


class GrantRefused(Exception):
    """The issuer refused a grant or a token: ``error`` is its OAuth error code."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


@dataclass(frozen=True)
class TokenResponse:
    """A successful token endpoint answer."""

    access_token: str
    refresh_token: str | None
    expires_in: int | None
    id_token: str | None
    scope: str | None


class OAuthClient:
    """Calls the issuer's token and revocation endpoints as the bridge's login client."""

    def __init__(
        self, http: IssuerHTTP, metadata: IssuerMetadata, *, client_id: str, auth: ClientAuth
    ) -> None:
        self._http = http
        self._metadata = metadata
        self.client_id = client_id
        self._auth = auth

    def _endpoint(self, name: str) -> str:
        endpoint = self._metadata.require().endpoint(name)
        if endpoint is None:
            raise IssuerUnavailable(f"The authentication service advertises no {name}")
        return endpoint

    def authorization_url(
        self, *, redirect_uri: str, scope: str, state: str, nonce: str, code_challenge: str
    ) -> str:
        """Where the browser goes to log in: an authorization code request with PKCE."""
        endpoint = self._endpoint("authorization_endpoint")
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "scope": scope,
                "state": state,
                "nonce": nonce,
                "code_challenge": code_challenge,
                "code_challenge_method": "S256",
            }
        )
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    def supports_password_grant(self) -> bool:
        """Whether the issuer's metadata allows the password grant (or says nothing)."""
        metadata = self._metadata.current
        supported = metadata.document.get("grant_types_supported") if metadata else None
        return not isinstance(supported, list) or "password" in supported

    async def exchange_code(
        self, code: str, *, redirect_uri: str, code_verifier: str
    ) -> TokenResponse:
        """RFC 6749 §4.1.3 with the PKCE verifier (RFC 7636 §4.5)."""
        return await self._token(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": code_verifier,
            }
        )

    async def refresh(self, refresh_token: str) -> TokenResponse:
        """RFC 6749 §6: a new access token (and maybe refresh token) for a refresh token."""
        return await self._token({"grant_type": "refresh_token", "refresh_token": refresh_token})

    async def password(self, username: str, password: str, scope: str) -> TokenResponse:
        """RFC 6749 §4.3, resource owner password credentials."""
        return await self._token(
            {"grant_type": "password", "username": username, "password": password, "scope": scope}
        )

    async def _token(self, form: dict[str, str]) -> TokenResponse:
        return await self._post("token_endpoint", form, "token", _token_response)

    async def revoke(self, token: str, hint: str) -> bool:
        """RFC 7009: whether the issuer accepted the revocation (200). An issuer that
        refuses, or cannot be reached, is logged, not raised: the logout holds
        anyway (bridge.auth.logout_moments)."""
        try:
            await self._post(
                "revocation_endpoint",
                {"token": token, "token_type_hint": hint},
                "revocation",
                lambda answer: None,  # 200 with any body, often none
            )
        except (GrantRefused, IssuerUnavailable) as e:
            log.warning("the issuer did not revoke a %s: %s", hint, e)
            return False
        return True

    async def _post(
        self,
        endpoint_name: str,
        form: dict[str, str],
        what: str,
        read: Callable[[dict[str, Any]], T],
    ) -> T:
        """One call (``what``: ``token`` or ``revocation``, its metrics label); ``read``
        makes the result of a 200 answer's JSON object (an empty one if there is none),
        or raises IssuerUnavailable (a malformed answer)."""
        endpoint = self._endpoint(endpoint_name)
        async with self._http.call(
            what,
            endpoint,
            form=form,
            auth=self._auth,
            unreachable=unreachable(f"{what} request", "The authentication service is unreachable"),
        ) as answer:
            try:
                body = await answer.response.json(content_type=None)
            except ValueError:
                body = None
            if answer.status == 200:
                return read(body if isinstance(body, dict) else {})
            error = body.get("error") if isinstance(body, dict) else None
            if answer.status in (400, 401) and isinstance(error, str):
                # invalid_grant, invalid_request, unsupported_token_type, ...; 401
                # invalid_client is the bridge's own configuration, but refusing the
                # grant is still the honest answer to the client.
                if error == "invalid_client":
                    log.error("the issuer refused the bridge's login client (%s)", what)
                raise GrantRefused(error)
            raise answer.refused(what, "The authentication service could not answer")


def _token_response(answer: dict[str, Any]) -> TokenResponse:
    """A token endpoint's 200 answer, checked."""
    access_token = answer.get("access_token")
    token_type = answer.get("token_type")
    if not isinstance(access_token, str) or not access_token:
        raise IssuerUnavailable("The authentication service answered without an access token")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise IssuerUnavailable("The authentication service issued a token that is not Bearer")
    refresh_token = answer.get("refresh_token")
    expires_in = answer.get("expires_in")
    id_token = answer.get("id_token")
    scope = answer.get("scope")
    return TokenResponse(
        access_token=access_token,
        refresh_token=refresh_token if isinstance(refresh_token, str) and refresh_token else None,
        # Python's JSON reads Infinity and NaN, which int() refuses.
        expires_in=int(expires_in)
        if isinstance(expires_in, int | float)
        and not isinstance(expires_in, bool)
        and math.isfinite(expires_in)
        else None,
        id_token=id_token if isinstance(id_token, str) else None,
        scope=scope if isinstance(scope, str) else None,
    )
