"""The ``device_login`` strategy: a real homeserver device and token per OAuth session.

On first sight of (user, device) the bridge registers the user through the
appservice (an existing user is fine) and logs the device in with
``m.login.application_service`` and its ``device_id``. The homeserver token
it gets back is kept, encrypted, in the store, and in memory; requests are
then forwarded with ``Authorization: Bearer <that token>`` and nothing else,
so the homeserver applies exactly the rules it applies to any user: no
appservice shortcuts, no shared transaction-ID cache, nothing to inject.

Exactly one login per device, across processes and hosts sharing the store:
the check-login-save sequence runs under the store's login lock. That
matters beyond tidiness: Conduit and conduwuit invalidate a device's previous
token when it logs in again.
"""

from __future__ import annotations

import hmac

from cachetools import LRUCache

from bridge.auth.identity import Identity
from bridge.config import BridgeConfig
from bridge.homeserver.appservice import AppserviceClient
from bridge.singleflight import SingleFlight
from bridge.store import Store


class DeviceLogin:
    """Acts as each device with that device's own homeserver token."""

    appservice_power = False

    def __init__(self, appservice: AppserviceClient, store: Store, config: BridgeConfig) -> None:
        self._appservice = appservice
        self._store = store
        self._tokens: LRUCache[Identity, str] = LRUCache(
            maxsize=config.homeserver.provisioning_cache_size
        )
        self._inflight: SingleFlight[Identity, None] = SingleFlight()

    async def prepare(self, identity: Identity, *, write: bool = False) -> None:
        if identity in self._tokens:
            return
        await self._inflight.run(identity, lambda: self._obtain(identity, failed=None))

    async def heal(self, identity: Identity, failed_authorization: str) -> None:
        await self._inflight.run(identity, lambda: self._obtain(identity, failed_authorization))

    def credentials(self, identity: Identity) -> tuple[str, list[tuple[str, str]]]:
        return f"Bearer {self._tokens[identity]}", []

    async def end_device(self, identity: Identity) -> None:
        """A session ended on purpose: log its homeserver token out and forget it."""
        self._tokens.pop(identity, None)
        async with self._store.login_lock(identity.user_id, identity.device_id):
            token = await self._store.device_token(identity.user_id, identity.device_id)
            if token is not None:
                await self._appservice.logout(token)
                await self._store.delete_device(identity.user_id, identity.device_id)

    async def _obtain(self, identity: Identity, failed: str | None) -> None:
        """Load the kept token, or log in; ``failed`` is a token the homeserver refused."""
        user_id, device_id = identity.user_id, identity.device_id
        self._tokens.pop(identity, None)
        token = None if failed else await self._store.device_token(user_id, device_id)
        if token is None:
            async with self._store.login_lock(user_id, device_id):
                # Another request, process or host may have logged in meanwhile.
                token = await self._store.device_token(user_id, device_id)
                if token is None or (
                    failed is not None and hmac.compare_digest(f"Bearer {token}", failed)
                ):
                    await self._appservice.register_user(identity.localpart)
                    token = await self._appservice.login(identity.localpart, device_id)
                    await self._store.save_device_token(user_id, device_id, token)
        self._tokens[identity] = token
