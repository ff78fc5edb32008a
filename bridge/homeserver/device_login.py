"""The ``device_login`` strategy: a real homeserver device and token per OAuth session.

On first sight of (user, device) the bridge registers the user through the
appservice (an existing user is fine) and logs the device in with
``m.login.application_service`` and its ``device_id``. The homeserver token
it gets back is kept, encrypted, in the store, and in memory; requests are
then forwarded with ``Authorization: Bearer <that token>`` and nothing else,
so the homeserver applies exactly the rules it applies to any user: no
appservice shortcuts, no shared transaction-ID cache, nothing to inject.

With ``issuer.kind: mas`` devices are logged in when MAS provisions them
(:meth:`DeviceLogin.upsert_device`), not on first sight: a token whose device
has no kept token and does not exist on the homeserver is refused (401), as
Synapse does in MAS mode. (A device that exists without a kept token, e.g.
after the store was lost, is logged in again.)

A token that names no device (the client API scope alone) has no device to
log in: its requests go through the appservice as the user alone
(``user_id=``), with the checks the bridge makes for appservice requests
(:meth:`bridge.forward.forwarder.Forwarder.appservice_power_for`).

Exactly one login per device, across processes and hosts sharing the store:
the check-login-save sequence runs under the store's login lock. That
matters beyond tidiness: Conduit and conduwuit invalidate a device's previous
token when it logs in again.
"""

from __future__ import annotations

import hmac
import logging

from cachetools import LRUCache, TTLCache

from bridge.auth.identity import Identity
from bridge.config import BridgeConfig
from bridge.errors import UnknownToken
from bridge.homeserver.appservice import AppserviceClient, device_path, refused_by_homeserver
from bridge.runtime.singleflight import SingleFlight
from bridge.store import Store

log = logging.getLogger("bridge.homeserver")


class DeviceLogin:
    """Acts as each device with that device's own homeserver token."""

    appservice_power = False

    def __init__(self, appservice: AppserviceClient, store: Store, config: BridgeConfig) -> None:
        self._appservice = appservice
        self._store = store
        self._as_authorization = f"Bearer {config.appservice.as_token}"
        self._tokens: LRUCache[Identity, str] = LRUCache(
            maxsize=config.homeserver.provisioning_cache_size
        )
        self._inflight: SingleFlight[Identity, None] = SingleFlight()
        self._provisions_on_sight = config.issuer.kind != "mas"
        # Users of device-less tokens known to exist on the homeserver.
        self._users: TTLCache[str, bool] = TTLCache(
            maxsize=config.homeserver.provisioning_cache_size,
            ttl=config.homeserver.provisioning_cache_ttl,
        )

    async def prepare(self, identity: Identity, *, write: bool = False) -> None:
        if identity.device_id is None:
            if identity.user_id not in self._users:
                await self._inflight.run(identity, lambda: self._register(identity))
            return
        if identity in self._tokens:
            return
        await self._inflight.run(identity, lambda: self._obtain(identity, failed=None))

    async def heal(self, identity: Identity, failed_authorization: str) -> None:
        if identity.device_id is None:
            self._users.pop(identity.user_id, None)
            await self.prepare(identity)
            return
        await self._inflight.run(identity, lambda: self._obtain(identity, failed_authorization))

    def credentials(self, identity: Identity) -> tuple[str, list[tuple[str, str]]]:
        if identity.device_id is None:
            return self.appservice_credentials(identity)
        return f"Bearer {self._tokens[identity]}", []

    def appservice_credentials(self, identity: Identity) -> tuple[str, list[tuple[str, str]]]:
        return self._as_authorization, [("user_id", identity.user_id)]

    async def _register(self, identity: Identity) -> None:
        """A device-less token's user: registered on first sight (under MAS: must exist)."""
        if self._provisions_on_sight:
            await self._appservice.register_user(identity.localpart)
        elif not await self._appservice.user_exists(identity.user_id):
            raise UnknownToken("Token is not active")
        self._users[identity.user_id] = True

    async def end_device(self, identity: Identity) -> None:
        """A session ended on purpose: log its homeserver token out and forget it."""
        self._tokens.pop(identity, None)
        async with self._store.login_lock(identity.user_id, identity.device):
            token = await self._store.device_token(identity.user_id, identity.device)
            if token is not None:
                await self._appservice.logout(token)
                await self._store.delete_device(identity.user_id, identity.device)

    async def upsert_device(self, identity: Identity, display_name: str | None) -> bool:
        """Log the device in (keeping its token) unless a token is kept for it already."""
        user_id, device_id = identity.user_id, identity.device
        created = False
        async with self._store.login_lock(user_id, device_id):
            token = await self._store.device_token(user_id, device_id)
            if token is not None and not await self._appservice.device_exists(user_id, device_id):
                token = None  # the homeserver lost it: the kept token is dead
            if token is None:
                token = await self._appservice.login(identity.localpart, device_id, display_name)
                await self._store.save_device_token(user_id, device_id, token)
                created = True
        self._tokens[identity] = token
        if not created and display_name is not None:
            await self.rename_device(identity, display_name)
        return created

    async def rename_device(self, identity: Identity, display_name: str) -> bool:
        """With the device's own token (``PUT /devices/{id}``); a device without a kept
        token is renamed as the user through the appservice."""
        token = await self._store.device_token(identity.user_id, identity.device)
        if token is not None:
            status, answer = await self._appservice.call_with_token(
                token, "PUT", device_path(identity.device), {"display_name": display_name}
            )
            if status in (200, 404):
                return status == 200
            if status != 401:  # 401: a dead token; the appservice can still do it
                raise refused_by_homeserver(status, answer, "The homeserver refused the rename")
        if not await self._appservice.device_exists(identity.user_id, identity.device):
            return False
        status, answer = await self._appservice.put_device(
            identity.user_id, identity.device, display_name
        )
        if status not in (200, 201):
            raise refused_by_homeserver(status, answer, "The homeserver refused the rename")
        return True

    async def delete_device(self, identity: Identity) -> None:
        """Log the kept token out (the homeserver deletes its device) and forget it; a
        device the bridge has no token for is deleted through the appservice."""
        await self.end_device(identity)
        if await self._appservice.device_exists(identity.user_id, identity.device):
            await self._appservice.delete_device(identity.user_id, identity.device)

    async def devices_of(self, user_id: str) -> set[str]:
        return await self._appservice.devices_of(user_id)

    async def forget_user(self, user_id: str) -> None:
        self._users.pop(user_id, None)
        for identity in [i for i in self._tokens if i.user_id == user_id]:
            self._tokens.pop(identity, None)
        for device_id in await self._store.devices_of(user_id):
            await self._store.delete_device(user_id, device_id)

    async def _obtain(self, identity: Identity, failed: str | None) -> None:
        """Load the kept token, or log in; ``failed`` is a token the homeserver refused."""
        user_id, device_id = identity.user_id, identity.device
        self._tokens.pop(identity, None)
        token = None if failed else await self._store.device_token(user_id, device_id)
        if token is None:
            async with self._store.login_lock(user_id, device_id):
                # Another request, process or host may have logged in meanwhile.
                token = await self._store.device_token(user_id, device_id)
                if token is None or (
                    failed is not None and hmac.compare_digest(f"Bearer {token}", failed)
                ):
                    token = await self._log_in(identity)
                    if token is None:
                        await self._store.delete_device(user_id, device_id)
                    else:
                        await self._store.save_device_token(user_id, device_id, token)
        if token is None:
            # MAS never provisioned this device, or deleted it.
            raise UnknownToken("Token is not active")
        self._tokens[identity] = token

    async def _log_in(self, identity: Identity) -> str | None:
        """A new token for the device; None under ``issuer.kind: mas`` when the device
        does not exist (only MAS creates devices then)."""
        if self._provisions_on_sight:
            await self._appservice.register_user(identity.localpart)
        elif not await self._appservice.device_exists(identity.user_id, identity.device):
            return None
        return await self._appservice.login(identity.localpart, identity.device)
