"""The ``masquerade`` strategy: appservice token + ``user_id`` + ``device_id`` (MSC4326).

Stateless apart from a bounded memory of which (user, device) pairs are known
to exist on the homeserver. A pair the homeserver lost (a device deleted by
an admin, a restored database) is provisioned again as soon as the
homeserver says so (:meth:`Masquerade.heal`), and in any case after
``provisioning_cache_ttl``.
"""

from __future__ import annotations

from cachetools import TTLCache

from bridge.auth.identity import Identity
from bridge.config import BridgeConfig
from bridge.homeserver.appservice import AppserviceClient
from bridge.singleflight import SingleFlight


class Masquerade:
    """Acts as any user of the namespace with the appservice token."""

    appservice_power = True

    def __init__(self, appservice: AppserviceClient, config: BridgeConfig) -> None:
        self._appservice = appservice
        self._authorization = f"Bearer {config.appservice.as_token}"
        hs = config.homeserver
        self._known: TTLCache[Identity, bool] = TTLCache(
            maxsize=hs.provisioning_cache_size, ttl=hs.provisioning_cache_ttl
        )
        self._inflight: SingleFlight[Identity, None] = SingleFlight()

    async def prepare(self, identity: Identity) -> None:
        if identity in self._known:
            return
        await self._inflight.run(identity, lambda: self._provision(identity))

    async def heal(self, identity: Identity, failed_authorization: str) -> None:
        self._known.pop(identity, None)
        await self.prepare(identity)

    async def _provision(self, identity: Identity) -> None:
        await self._appservice.register_user(identity.localpart)
        await self._appservice.create_device(identity.user_id, identity.device_id)
        self._known[identity] = True

    def credentials(self, identity: Identity) -> tuple[str, list[tuple[str, str]]]:
        return self._authorization, [
            ("user_id", identity.user_id),
            ("device_id", identity.device_id),
        ]
