"""What the login layer does, apart from HTTP: log devices in, refresh, end sessions.

One :class:`LoginLayer` per application, shared by the routes of
:mod:`bridge.login.sso`, :mod:`bridge.login.matrix` and
:mod:`bridge.login.backchannel`.

Ending a session (``/logout``, ``/logout/all``, back-channel logout) goes in
this order, so that no request can slip between the steps and bring the
session back:

1. the sessions are taken out of the store, and the refresh tokens the bridge
   handed out for them revoked at the issuer (RFC 7009);
2. the logout moment is written to the store (announced to every instance)
   and applied here: from now on, every token of the device (or user)
   issued until now is refused, and the cached ones are dropped; the
   presented access token is revoked too;
3. the homeserver devices are ended (``device_login``: the kept token logged
   out, the device deleted; ``masquerade``: deleted through the appservice).

The issuer's refusal to revoke, or the homeserver's to delete, is logged and
does not undo the logout: step 1 already holds on its own.
"""

from __future__ import annotations

import json
import logging
import secrets
import string
from dataclasses import dataclass

from bridge.auth.cache import CachedAuthenticator
from bridge.auth.identity import API_SCOPE, DeviceID, Identity, UserID, device_scope
from bridge.auth.logout_moments import TOKEN_MOMENT_DEVICE, LogoutMoments
from bridge.config import BridgeConfig, LoginConfig
from bridge.errors import MatrixError
from bridge.homeserver.appservice import AppserviceClient
from bridge.homeserver.provisioning import MAX_DEVICE_NAME
from bridge.homeserver.strategy import IdentityStrategy
from bridge.issuer.oauth import OAuthClient, TokenResponse
from bridge.login.jwts import JwtChecks, JwtRefused
from bridge.runtime.clock import Clock
from bridge.store import LoginSession, Store
from bridge.store.records import digest

log = logging.getLogger("bridge.login")

# Synapse's device IDs: ten upper-case letters (MAS's policy wants at least ten).
_DEVICE_ID_ALPHABET = string.ascii_uppercase
_DEVICE_ID_LENGTH = 10


def new_device_id() -> str:
    """A fresh device ID, as Synapse makes them."""
    return "".join(secrets.choice(_DEVICE_ID_ALPHABET) for _ in range(_DEVICE_ID_LENGTH))


def localpart_of(user_id: str) -> str:
    return user_id[1:].partition(":")[0]


def identity_of(user_id: str, device_id: str) -> Identity:
    return Identity(UserID(user_id), DeviceID(device_id), localpart_of(user_id))


class LoginFailed(Exception):
    """A login could not be completed; the message is fit for the person (no secret)."""


@dataclass(frozen=True)
class Issued:
    """Tokens the bridge obtained for a device: what ``POST /login`` answers."""

    user_id: str
    device_id: str
    access_token: str
    refresh_token: str | None
    # Unix time the access token expires, where the issuer said.
    expires_at: float | None

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> Issued:
        return cls(**json.loads(text))

    def matrix_answer(self, well_known: dict[str, object], now: float) -> dict[str, object]:
        """The Matrix login (or refresh) answer, given at ``now`` (Unix seconds)."""
        answer: dict[str, object] = {
            "user_id": self.user_id,
            "device_id": self.device_id,
            "access_token": self.access_token,
            "well_known": well_known,
        }
        if self.refresh_token is not None:
            answer["refresh_token"] = self.refresh_token
        if self.expires_at is not None:
            answer["expires_in_ms"] = max(0, int((self.expires_at - now) * 1000))
        return answer


class LoginLayer:
    """The bridge's legacy login layer for a generic OIDC issuer.

    ``clock``: what its one-time secrets' expiries and its tokens' lifetimes are
    read from (the app's)."""

    def __init__(
        self,
        *,
        config: BridgeConfig,
        oauth: OAuthClient,
        jwts: JwtChecks,
        store: Store,
        authenticator: CachedAuthenticator,
        moments: LogoutMoments,
        strategy: IdentityStrategy,
        appservice: AppserviceClient,
        clock: Clock,
    ) -> None:
        assert config.login is not None
        self.config: LoginConfig = config.login
        self.oauth = oauth
        self.jwts = jwts
        self.store = store
        self.authenticator = authenticator
        self.moments = moments
        self.clock = clock
        self._strategy = strategy
        self._appservice = appservice
        self.redirect_uri = config.public_baseurl.rstrip("/") + "/_bridge/login/callback"

    def scope(self, device_id: str) -> str:
        """What the bridge asks for a device: OpenID, the Matrix API, the device."""
        scopes = ["openid", API_SCOPE, device_scope(device_id), *self.config.extra_scopes]
        return " ".join(dict.fromkeys(scopes))

    # -- logging a device in ------------------------------------------------------------

    async def adopt(
        self, tokens: TokenResponse, *, device_id: str, nonce: str | None, localpart: str | None
    ) -> tuple[Issued, Identity]:
        """Check what the issuer handed out for ``device_id`` and keep its session.

        The access token is judged exactly as any request's will be (so the user
        and device returned are the ones the bridge will act as); the ID token
        gives ``sub`` and ``sid`` for back-channel logout. ``localpart``: the user
        the client asked for (password login), who must be the token's.
        """
        try:
            identity = await self.authenticator.authenticate(tokens.access_token)
        except MatrixError as e:
            raise LoginFailed(f"The account cannot be used here: {e.message}") from e
        if identity.device_id != device_id:
            raise LoginFailed("The authentication service issued a token for another device")
        if localpart is not None and identity.localpart != localpart:
            await self.revoke_issued(tokens)
            raise LoginFailed("The authentication service issued a token for another user")
        sub = sid = None
        if tokens.id_token is not None:
            try:
                claims = await self.jwts.id_token(tokens.id_token, nonce=nonce)
            except JwtRefused as e:
                log.warning("ID token refused: %s", e)
                raise LoginFailed("The authentication service's ID token is not valid") from e
            sub, sid = claims.sub, claims.sid
        elif nonce is not None:
            raise LoginFailed("The authentication service returned no ID token")
        await self.store.save_session(
            LoginSession(identity.user_id, identity.device_id, sub, sid, tokens.refresh_token)
        )
        expires_at = None if tokens.expires_in is None else self.clock.time() + tokens.expires_in
        issued = Issued(
            identity.user_id,
            identity.device_id,
            tokens.access_token,
            tokens.refresh_token,
            expires_at,
        )
        return issued, identity

    async def revoke_issued(self, tokens: TokenResponse) -> None:
        if tokens.refresh_token is not None:
            await self.oauth.revoke(tokens.refresh_token, "refresh_token")
        await self.oauth.revoke(tokens.access_token, "access_token")

    async def provision(self, identity: Identity, display_name: str | None) -> None:
        """Create the device on the homeserver now (named, when the client said), so that
        its first request is as fast as any other."""
        try:
            await self._strategy.prepare(identity)
            if display_name:
                await self._strategy.rename_device(identity, display_name[:MAX_DEVICE_NAME])
        except MatrixError as e:
            # The first request will try again; the login itself stands.
            log.warning("could not prepare a new device on the homeserver: %s", e.message)

    # -- ending sessions ---------------------------------------------------------------

    async def _record(
        self,
        user_id: str,
        device_id: str | None,
        token_hash: str | None = None,
        moment: int | None = None,
    ) -> None:
        when = self.moments.now() if moment is None else moment
        recorded = await self.store.add_logout_moment(user_id, device_id, when, token_hash)
        self.moments.apply([recorded])

    async def end_token(
        self, user_id: str, access_token: str, expires_at: float | None = None
    ) -> None:
        """``/logout`` with a device-less token: nothing on the homeserver to end, so the
        token is revoked and refused from now on, by every instance, whatever its
        ``iat`` (a JWT access token cannot be revoked at the issuer). The moment first,
        so that no instance serves the token while the issuer is slow to revoke it.

        The moment is dated at the token's ``exp`` where known (not before now), so
        that it is kept, as every moment is, ``login.logout_retention`` past that:
        a token living longer than the retention cannot come back."""
        now = self.moments.now()
        moment = now if expires_at is None else max(now, int(expires_at))
        await self._record(user_id, TOKEN_MOMENT_DEVICE, digest(access_token), moment)
        await self.oauth.revoke(access_token, "access_token")

    async def _end_sessions(self, user_id: str, device_id: str | None) -> list[str]:
        """Steps 1 and 2 for the device (or user): its sessions taken out of the store
        and their refresh tokens revoked, then the moment. In that order, so that a
        refresh racing the logout either finds no session, or swapped its new refresh
        token in before, which is then the one revoked, and its new access token is
        older than the moment. The devices of the sessions ended."""
        sessions = await self.store.take_sessions(user_id, device_id)
        for session in sessions:
            if session.refresh_token is not None:
                await self.oauth.revoke(session.refresh_token, "refresh_token")
        await self._record(user_id, device_id)
        return [session.device_id for session in sessions]

    async def end_device(self, user_id: str, device_id: str, access_token: str | None) -> None:
        """``/logout`` and back-channel logout: end one device (see the module)."""
        await self._end_sessions(user_id, device_id)
        if access_token is not None:
            await self.oauth.revoke(access_token, "access_token")
        await self._delete_device(identity_of(user_id, device_id))

    async def end_user(self, user_id: str, access_token: str | None) -> None:
        """``/logout/all``: every token of the user issued until now is refused, and every
        device the bridge made for the user is deleted."""
        devices = set(await self._end_sessions(user_id, None))
        if access_token is not None:
            await self.oauth.revoke(access_token, "access_token")
        devices.update(await self.store.devices_of(user_id))
        if self._strategy.appservice_power:
            # masquerade keeps no list: every device the homeserver has for the user
            # was made by the bridge (clients reach the homeserver only through it),
            # but for the dehydrated device (MSC3814), which is no session.
            try:
                on_homeserver = await self._strategy.devices_of(user_id)
                dehydrated = await self._appservice.dehydrated_device(user_id)
            except MatrixError as e:
                log.error("could not list the devices of a user at logout: %s", e.message)
            else:
                devices.update(on_homeserver - {dehydrated or ""})
        for device_id in sorted(devices):
            await self._delete_device(identity_of(user_id, device_id))

    async def end_sessions(self, sessions: list[LoginSession]) -> None:
        """Back-channel logout: end each device of the sessions the issuer ended."""
        for session in sessions:
            await self.end_device(session.user_id, session.device_id, None)

    async def _delete_device(self, identity: Identity) -> None:
        try:
            await self._strategy.delete_device(identity)
        except MatrixError as e:
            log.error(
                "could not delete device %s of %s on the homeserver: %s",
                identity.device_id,
                identity.user_id,
                e.message,
            )
