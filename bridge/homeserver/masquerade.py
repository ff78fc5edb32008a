"""The ``masquerade`` strategy: appservice token + ``user_id`` + ``device_id`` (MSC4326).

Stateless apart from a bounded memory of which (user, device) pairs are known
to exist on the homeserver. A pair the homeserver lost (a device deleted by
an admin, a restored database) is provisioned again as soon as the
homeserver says so (:meth:`Masquerade.heal`), and in any case after
``provisioning_cache_ttl``.

With ``issuer.kind: mas`` the pair is not provisioned but looked up: MAS
creates devices through the provisioning API, and a token whose device is
gone is refused (401), as Synapse does in MAS mode.

With ``homeserver.admin_localpart`` set, each user's state (deactivated,
locked, shadow-banned) is read with the admin API and enforced as the
homeserver would for the user's own token; it is remembered for
``account_state_ttl``.
"""

from __future__ import annotations

from cachetools import TTLCache

from bridge.auth.identity import Identity
from bridge.config import BridgeConfig
from bridge.errors import UnknownToken
from bridge.homeserver.appservice import AccountState, AppserviceClient, refused_by_homeserver
from bridge.runtime.singleflight import SingleFlight


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
        self._admin = f"@{hs.admin_localpart}:{config.server_name}" if hs.admin_localpart else None
        self._states: TTLCache[str, AccountState] = TTLCache(
            maxsize=hs.provisioning_cache_size, ttl=hs.account_state_ttl
        )
        self._state_inflight: SingleFlight[str, AccountState] = SingleFlight()
        self._provisions_on_sight = config.issuer.kind != "mas"

    async def prepare(self, identity: Identity, *, write: bool = False) -> None:
        if self._admin is not None:
            state = self._states.get(identity.user_id)
            if state is None:
                state = await self._state_inflight.run(
                    identity.user_id, lambda: self._read_state(identity.user_id)
                )
            state.raise_if_barred(write=write)
        if identity in self._known:
            return
        await self._inflight.run(identity, lambda: self._provision(identity))

    async def _read_state(self, user_id: str) -> AccountState:
        assert self._admin is not None
        state = await self._appservice.account_state(user_id, self._admin)
        self._states[user_id] = state
        return state

    async def heal(self, identity: Identity, failed_authorization: str) -> None:
        self._known.pop(identity, None)
        self._states.pop(identity.user_id, None)
        await self.prepare(identity)

    async def _provision(self, identity: Identity) -> None:
        device_id = identity.device_id
        if self._provisions_on_sight:
            await self._appservice.register_user(identity.localpart)
            if device_id is not None:
                await self._appservice.create_device(identity.user_id, device_id)
        elif device_id is None:
            # A device-less token under MAS: its user must exist (MAS provisions users).
            if not await self._appservice.user_exists(identity.user_id):
                raise UnknownToken("Token is not active")
        elif not await self._appservice.device_exists(identity.user_id, device_id):
            raise UnknownToken("Token is not active")
        self._known[identity] = True

    def credentials(self, identity: Identity) -> tuple[str, list[tuple[str, str]]]:
        if identity.device_id is None:
            return self._authorization, [("user_id", identity.user_id)]
        return self._authorization, [
            ("user_id", identity.user_id),
            ("device_id", identity.device_id),
        ]

    def appservice_credentials(self, identity: Identity) -> tuple[str, list[tuple[str, str]]]:
        return self.credentials(identity)

    async def upsert_device(self, identity: Identity, display_name: str | None) -> bool:
        status, answer = await self._appservice.put_device(
            identity.user_id, identity.device, display_name
        )
        if status not in (200, 201):
            raise refused_by_homeserver(status, answer, "The homeserver refused the device")
        self._known[identity] = True
        return status == 201

    async def rename_device(self, identity: Identity, display_name: str) -> bool:
        # The appservice's PUT creates a missing device (AS-15): look first.
        if not await self._appservice.device_exists(identity.user_id, identity.device):
            return False
        await self.upsert_device(identity, display_name)
        return True

    async def delete_device(self, identity: Identity) -> None:
        self._known.pop(identity, None)
        await self._appservice.delete_device(identity.user_id, identity.device)

    async def devices_of(self, user_id: str) -> set[str]:
        return await self._appservice.devices_of(user_id)

    async def forget_user(self, user_id: str) -> None:
        self._states.pop(user_id, None)
        for identity in [i for i in self._known if i.user_id == user_id]:
            self._known.pop(identity, None)
