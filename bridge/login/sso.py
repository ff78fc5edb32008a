"""Legacy SSO through the issuer: ``/login/sso/redirect`` → the issuer → callback →
confirmation → ``redirectUrl?loginToken=...``.

1. ``GET /_matrix/client/{r0,v3}/login/sso/redirect[/{idpId}]?redirectUrl=...``:
   the ``redirectUrl`` is checked (an absolute URL, not ``javascript:`` and the
   like, within ``login.redirect_url_allowlist`` when one is set); a new device
   ID is chosen; ``state``, ``nonce`` and a PKCE verifier are made
   (:mod:`secrets`); the flow is kept in the store under the digest of
   ``state``, bound to a random value that is also set as an HttpOnly,
   SameSite=Lax cookie scoped to ``/_bridge/login/``; the browser goes to the
   issuer's authorization endpoint (code + PKCE S256).
2. ``GET /_bridge/login/callback?code=...&state=...``: ``state`` is used up
   (once, atomically, across instances); the cookie must be the flow's
   (another browser, or a forged ``state``, stops here); RFC 9207's ``iss``
   must be the issuer when sent; the code is exchanged with the verifier; the
   tokens are judged as every request's will be, and the ID token checked
   (nonce); the session is kept (``sub``, ``sid``, refresh token), and the
   confirmation page asks "continue to <the client's host>?".
3. ``POST /_bridge/login/continue``: the form's one-time secret and the cookie
   again; a ``loginToken`` (random, stored as its digest, one use, short-lived)
   is made, and the browser goes to ``redirectUrl`` with it.

Any failure is the plain HTML error page (:mod:`bridge.login.pages`), never a
stack trace; nothing is issued.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

from aiohttp import web

from bridge.errors import IssuerUnavailable
from bridge.issuer.oauth import GrantRefused, pkce_pair
from bridge.login.pages import confirmation_page, error_page
from bridge.login.service import LoginFailed, LoginLayer, new_device_id
from bridge.state import CONFIG, LOGIN
from bridge.store.records import digest

log = logging.getLogger("bridge.login")

COOKIE = "matrix_oidc_bridge_sso"
COOKIE_PATH = "/_bridge/login/"
CALLBACK_PATH = "/_bridge/login/callback"
CONTINUE_PATH = "/_bridge/login/continue"
# Kinds of one-time secrets in the store.
STATE = "sso_state"
CONFIRMATION = "sso_confirmation"
LOGIN_TOKEN = "login_token"  # noqa: S105 - a kind of secret, not one

_MAX_REDIRECT_URL = 2048
# A URL scheme (RFC 3986 §3.1); mobile clients use their own (element://...).
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_NEVER_SCHEMES = frozenset({"javascript", "data", "vbscript", "file", "blob", "about"})
# What a host[:port] of an http(s) redirectUrl may hold (it goes into a CSP header).
_NETLOC = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")


class SsoRefused(Exception):
    """A step of the flow refused; the message is for the person, the status for HTTP."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def checked_redirect_url(value: str | None, allowlist: tuple[str, ...]) -> str:
    """The client's ``redirectUrl``, or :class:`SsoRefused`."""
    if not value:
        raise SsoRefused("The client did not say where to return after the login (redirectUrl).")
    if len(value) > _MAX_REDIRECT_URL or not value.isprintable() or " " in value:
        raise SsoRefused("The client's return address is not a valid URL.")
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if not _SCHEME.fullmatch(scheme) or scheme in _NEVER_SCHEMES:
        raise SsoRefused("The client's return address is not a valid URL.")
    if scheme in ("http", "https") and not _NETLOC.fullmatch(parts.netloc):
        raise SsoRefused("The client's return address is not a valid URL.")
    if parts.fragment:
        raise SsoRefused("The client's return address must not have a fragment.")
    if allowlist and not any(_within(parts, prefix) for prefix in allowlist):
        raise SsoRefused("This server does not allow logins for that client.", status=403)
    return value


def _within(url: SplitResult, prefix: str) -> bool:
    """Whether ``url`` is at or below ``prefix``: same scheme, host and port (any, for a
    prefix without them, such as ``element://``), and the prefix's path a whole-segment
    prefix of the URL's."""
    allowed = urlsplit(prefix)
    if url.scheme.lower() != allowed.scheme.lower():
        return False
    if allowed.netloc and url.netloc.lower() != allowed.netloc.lower():
        return False
    base = allowed.path.rstrip("/")
    return not base or url.path == base or url.path.startswith(base + "/")


def with_login_token(redirect_url: str, login_token: str) -> str:
    """``redirectUrl`` with ``loginToken`` added to its query (as Synapse adds it)."""
    parts = urlsplit(redirect_url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), ("loginToken", login_token)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _cookie_secure(request: web.Request) -> bool:
    return request.app[CONFIG].public_baseurl.startswith("https://")


def _redirect(location: str) -> web.Response:
    return web.Response(
        status=302,
        headers={
            "Location": location,
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
        },
    )


def _refused_page(e: SsoRefused) -> web.Response:
    return error_page(e.message, status=e.status)


async def sso_redirect(request: web.Request) -> web.StreamResponse:
    """Start a login at the issuer (step 1)."""
    layer = request.app[LOGIN]
    try:
        idp = request.match_info.get("idp")
        if idp is not None and idp != layer.config.idp_id:
            raise SsoRefused("Unknown identity provider.", status=404)
        redirect_url = checked_redirect_url(
            request.rel_url.query.get("redirectUrl"), layer.config.redirect_url_allowlist
        )
        device_id = new_device_id()
        state, nonce, binding = (secrets.token_urlsafe(32) for _ in range(3))
        verifier, challenge = pkce_pair()
        flow = {
            "redirect_url": redirect_url,
            "device_id": device_id,
            "nonce": nonce,
            "code_verifier": verifier,
        }
        location = layer.oauth.authorization_url(
            redirect_uri=layer.redirect_uri,
            scope=layer.scope(device_id),
            state=state,
            nonce=nonce,
            code_challenge=challenge,
        )
        await layer.store.put_secret(
            STATE,
            state,
            digest(binding),
            json.dumps(flow),
            int(layer.clock.time() + layer.config.flow_ttl),
        )
    except SsoRefused as e:
        return _refused_page(e)
    except IssuerUnavailable:
        return error_page("The authentication service is unavailable. Try again later.", status=503)
    response = _redirect(location)
    response.set_cookie(
        COOKIE,
        binding,
        max_age=int(layer.config.flow_ttl),
        path=COOKIE_PATH,
        httponly=True,
        samesite="Lax",
        secure=_cookie_secure(request),
    )
    return response


def _bound(request: web.Request, binding_digest: str) -> bool:
    cookie = request.cookies.get(COOKIE)
    return cookie is not None and hmac.compare_digest(digest(cookie), binding_digest)


async def sso_callback(request: web.Request) -> web.StreamResponse:
    """The issuer's answer (step 2): exchange the code, then ask for confirmation."""
    layer = request.app[LOGIN]
    try:
        return await _callback(request, layer)
    except SsoRefused as e:
        return _refused_page(e)
    except LoginFailed as e:
        return error_page(str(e))
    except IssuerUnavailable:
        return error_page("The authentication service is unavailable. Try again later.", status=503)


async def _callback(request: web.Request, layer: LoginLayer) -> web.StreamResponse:
    query = request.rel_url.query
    state = query.get("state")
    if not state:
        raise SsoRefused("The login answer has no state.")
    taken = await layer.store.take_secret(STATE, state, int(layer.clock.time()))
    if taken is None:
        raise SsoRefused("This login has expired or was already completed. Start it again.")
    binding, payload = taken
    if not _bound(request, binding):
        raise SsoRefused("This login was started in another browser. Start it again here.")
    flow = json.loads(payload)
    iss = query.get("iss")
    if iss is not None and iss != request.app[CONFIG].issuer.issuer:
        # RFC 9207: an answer from another issuer (a mix-up attack).
        raise SsoRefused("The login answer came from another authentication service.")
    if "error" in query:
        log.info("the issuer refused an SSO login: %s", query.get("error", "")[:64])
        raise SsoRefused("The authentication service did not complete the login.", status=403)
    code = query.get("code")
    if not code:
        raise SsoRefused("The login answer has no authorization code.")
    try:
        tokens = await layer.oauth.exchange_code(
            code, redirect_uri=layer.redirect_uri, code_verifier=flow["code_verifier"]
        )
    except GrantRefused as e:
        log.info("the issuer refused an authorization code: %s", e.error)
        raise SsoRefused("The authentication service refused this login.", status=403) from e
    issued, _identity = await layer.adopt(
        tokens, device_id=flow["device_id"], nonce=flow["nonce"], localpart=None
    )
    form_secret = secrets.token_urlsafe(32)
    confirmation = {"issued": issued.to_json(), "redirect_url": flow["redirect_url"]}
    await layer.store.put_secret(
        CONFIRMATION,
        form_secret,
        binding,
        json.dumps(confirmation),
        int(layer.clock.time() + layer.config.flow_ttl),
    )
    return confirmation_page(
        user_id=issued.user_id,
        client_url=flow["redirect_url"],
        action=CONTINUE_PATH,
        form_secret=form_secret,
        server_name=request.app[CONFIG].server_name,
    )


async def sso_continue(request: web.Request) -> web.StreamResponse:
    """The person confirmed (step 3): mint the ``loginToken``, back to the client."""
    layer = request.app[LOGIN]
    try:
        form = await request.post()
        form_secret = form.get("session")
        if not isinstance(form_secret, str) or not form_secret:
            raise SsoRefused("The confirmation is incomplete. Start the login again.")
        taken = await layer.store.take_secret(CONFIRMATION, form_secret, int(layer.clock.time()))
        if taken is None:
            raise SsoRefused("This login has expired or was already completed. Start it again.")
        binding, payload = taken
        if not _bound(request, binding):
            raise SsoRefused("This login was started in another browser. Start it again here.")
        confirmation = json.loads(payload)
        login_token = secrets.token_urlsafe(32)
        await layer.store.put_secret(
            LOGIN_TOKEN,
            login_token,
            "",
            confirmation["issued"],
            int(layer.clock.time() + layer.config.login_token_ttl),
        )
    except SsoRefused as e:
        return _refused_page(e)
    response = _redirect(with_login_token(confirmation["redirect_url"], login_token))
    response.del_cookie(COOKIE, path=COOKIE_PATH)
    return response


def add_routes(app: web.Application) -> None:
    """Before the client catch-all."""
    version = "/_matrix/client/{version:r0|v3}"
    app.router.add_get(f"{version}/login/sso/redirect", sso_redirect, name="login:sso")
    app.router.add_get(f"{version}/login/sso/redirect/{{idp}}", sso_redirect, name="login:sso_idp")
    app.router.add_get(CALLBACK_PATH, sso_callback, name="login:callback")
    app.router.add_post(CONTINUE_PATH, sso_continue, name="login:confirmed")
