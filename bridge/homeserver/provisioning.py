"""MAS's provisioning calls (``/_synapse/mas/*``), carried out through the appservice.

docs/mas-provisioning-api.md is the contract (Synapse's behaviour, MAS's
calls); :mod:`bridge.routes.provisioning` authenticates and validates, this module
acts. Users are handled the same way under both strategies, as the user
through the appservice (:meth:`AppserviceClient.act_as_user`: ``as_token`` +
``?user_id=``, which needs no device): registration with ``inhibit_login``,
``PUT /profile/{userId}/displayname``, ``POST /account/deactivate`` with
``erase``. Devices go through the identity strategy (MSC4190 calls under
``masquerade``, the device's own login and token under ``device_login``).

What Synapse's admin API gives (``homeserver.admin_localpart`` set, Synapse
only): ``is_deactivated``/``is_suspended`` in ``query_user``, ``locked``, and
``reactivate_user``. Without it ``query_user`` answers ``false`` for both
(nothing in the client-server API says), ``locked`` is left to MAS (its
introspection already answers inactive for a locked user's tokens; the
bridge drops the user's cached tokens), and ``reactivate_user`` is answered
as Synapse answers what it cannot do (404 ``M_UNRECOGNIZED``). E-mail
addresses (``set_emails``/``unset_emails``) are never carried out: the
client-server API cannot add a validated address.

Only the users of the bridge's own namespace may be touched: its appservice
sender, ``appservice.reserved_localparts`` and other appservices' exclusive
namespaces are "User not found" (404), and reserved for registration.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from bridge.auth.cache import CachedAuthenticator
from bridge.auth.identity import DeviceID, Identity, UserID
from bridge.auth.reset_approvals import CrossSigningResetApprovals
from bridge.auth.verifier import ClaimRules
from bridge.config import BridgeConfig
from bridge.errors import BadRequest, CannotBeDone, MatrixError
from bridge.homeserver.appservice import AppserviceClient, refused_by_homeserver
from bridge.homeserver.registration import user_namespace
from bridge.homeserver.strategy import IdentityStrategy

log = logging.getLogger("bridge.homeserver")

_V3 = "/_matrix/client/v3"
# Synapse's MXID_LOCALPART_ALLOWED_CHARACTERS and MAX_USERID_LENGTH.
_LOCALPART_CHARACTERS = re.compile(r"[a-z0-9._=/+-]*")
_MAX_USER_ID = 255
# Synapse's limit on device display names (handlers/device.py).
MAX_DEVICE_NAME = 100


def user_not_found() -> MatrixError:
    return MatrixError("User not found", errcode="M_NOT_FOUND", status=404)


def _invalid_username(message: str) -> BadRequest:
    return BadRequest(message, errcode="M_INVALID_USERNAME")


@dataclass(frozen=True)
class ProfileChange:
    """``provision_user``'s profile fields: None leaves a field as it is, ``""`` unsets it."""

    displayname: str | None = None
    avatar_url: str | None = None


class Provisioning:
    """The twelve calls of MAS, on the homeserver behind the bridge."""

    def __init__(
        self,
        appservice: AppserviceClient,
        strategy: IdentityStrategy,
        authenticator: CachedAuthenticator,
        approvals: CrossSigningResetApprovals,
        config: BridgeConfig,
    ) -> None:
        self._appservice = appservice
        self._strategy = strategy
        self._authenticator = authenticator
        self._approvals = approvals
        self._server_name = config.server_name
        self._rules = ClaimRules.from_config(config)
        self._namespace = re.compile(user_namespace(config.server_name))
        admin = config.homeserver.admin_localpart
        self._admin = f"@{admin}:{config.server_name}" if admin else None

    # -- users ----------------------------------------------------------------------

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self._server_name}"

    def _reserved(self, localpart: str) -> str | None:
        """Why the bridge may never act as this user (None: it may)."""
        if localpart in self._rules.reserved_localparts:
            return "This user ID is reserved."
        if any(rx.match(self.user_id(localpart)) for rx in self._rules.exclusive_users):
            return "This user ID is reserved by an application service."
        return None

    async def _existing_user(self, localpart: str) -> str:
        """The user's ID; 404 "User not found" unless it exists and the bridge may act as it."""
        user_id = self.user_id(localpart)
        if (
            not self._namespace.fullmatch(user_id)
            or self._reserved(localpart) is not None
            or not await self._appservice.user_exists(user_id)
        ):
            raise user_not_found()
        return user_id

    def _username_problem(self, localpart: str) -> MatrixError | None:
        """Synapse's ``check_username``, up to the existence check (same order, same answers)."""
        if not _LOCALPART_CHARACTERS.fullmatch(localpart):
            return _invalid_username("User ID can only contain characters a-z, 0-9, or '=_-./+'")
        if not localpart:
            return _invalid_username("User ID cannot be empty")
        if localpart.startswith("_"):
            return _invalid_username("User ID may not begin with _")
        reserved = self._reserved(localpart)
        if reserved is not None:
            return BadRequest(reserved, errcode="M_EXCLUSIVE")
        if len(self.user_id(localpart)) > _MAX_USER_ID:
            return _invalid_username(f"User ID may not be longer than {_MAX_USER_ID} characters")
        return None

    async def check_localpart_available(self, localpart: str) -> None:
        """``is_localpart_available``: 400 with Synapse's errcode when it is not.

        Synapse's check for an existing user is case-insensitive; the bridge can
        only ask for the exact user ID (a lower-case one, by then).
        """
        problem = self._username_problem(localpart)
        if problem is None and await self._appservice.user_exists(self.user_id(localpart)):
            problem = BadRequest("User ID already taken.", errcode="M_USER_IN_USE")
        if problem is None and localpart.isdigit():
            problem = _invalid_username("Numeric user IDs are reserved for guest users.")
        if problem is not None:
            raise problem

    async def query_user(self, localpart: str) -> dict[str, Any]:
        """``query_user``: the profile, and the account's state where the admin API says."""
        user_id = self.user_id(localpart)
        if self._admin is not None and self._namespace.fullmatch(user_id):
            if self._reserved(localpart) is not None:
                raise user_not_found()
            user = await self._appservice.admin_user(user_id, self._admin)
            if user is None:
                raise user_not_found()
            return {
                "user_id": user_id,
                "display_name": _text_or_none(user.get("displayname")),
                "avatar_url": _text_or_none(user.get("avatar_url")),
                "is_suspended": user.get("suspended") is True,
                "is_deactivated": user.get("deactivated") is True,
            }
        user_id = await self._existing_user(localpart)
        status, profile = await self._appservice.act_as_user(user_id, "GET", _profile(user_id))
        if status not in (200, 404):
            raise refused_by_homeserver(
                status, profile, "The homeserver could not read the profile"
            )
        return {
            "user_id": user_id,
            "display_name": _text_or_none(profile.get("displayname")),
            "avatar_url": _text_or_none(profile.get("avatar_url")),
            # Not in the client-server API: honest defaults (README, "MAS in front ...").
            "is_suspended": False,
            "is_deactivated": False,
        }

    async def provision_user(
        self,
        localpart: str,
        *,
        profile: ProfileChange,
        locked: bool | None,
        emails_given: bool,
    ) -> bool:
        """``provision_user``: create or update; whether the user was created.

        As Synapse, in this order: create (with the given display name, else the
        localpart) or change the display name; lock or unlock; the avatar. The
        steps are not one transaction.
        """
        user_id = self.user_id(localpart)
        exists = (
            self._namespace.fullmatch(user_id) is not None
            and self._reserved(localpart) is None
            and await self._appservice.user_exists(user_id)
        )
        if emails_given:
            log.info("provision_user: e-mail addresses are not carried out on this homeserver")
        if exists:
            if profile.displayname is not None:
                await self.set_displayname(user_id, profile.displayname)
        else:
            problem = self._username_problem(localpart)
            if problem is not None:
                raise problem
            await self._appservice.register_user(localpart)
            await self.set_displayname(user_id, profile.displayname or localpart)
        if locked is not None:
            await self._set_locked(user_id, locked)
        if profile.avatar_url is not None:
            status, answer = await self._appservice.act_as_user(
                user_id,
                "PUT",
                _profile(user_id, "avatar_url"),
                body={"avatar_url": profile.avatar_url},
            )
            if status != 200:
                raise refused_by_homeserver(status, answer, "The homeserver refused the avatar")
        return not exists

    async def _set_locked(self, user_id: str, locked: bool) -> None:
        if self._admin is not None:
            await self._appservice.admin_update_user(user_id, self._admin, {"locked": locked})
        elif locked:
            log.info("provision_user: locking is left to MAS (no homeserver.admin_localpart)")
        if locked:
            # MAS answers inactive for a locked user's tokens; stop trusting cached answers.
            self._authenticator.forget_user(user_id)

    async def set_displayname(self, user_id: str, displayname: str) -> None:
        """Set (``""``: unset) the display name, as the user (the homeserver updates the
        user's membership events)."""
        status, answer = await self._appservice.act_as_user(
            user_id, "PUT", _profile(user_id, "displayname"), body={"displayname": displayname}
        )
        if status != 200:
            raise refused_by_homeserver(status, answer, "The homeserver refused the display name")

    async def set_displayname_of(self, localpart: str, displayname: str) -> None:
        """``set_displayname`` (and, with ``""``, ``unset_displayname``)."""
        await self.set_displayname(await self._existing_user(localpart), displayname)

    async def delete_user(self, localpart: str, *, erase: bool) -> None:
        """``delete_user``: deactivate as the user, through the appservice (Synapse skips
        user-interactive auth for appservices; a homeserver that asks for it cannot
        be made to do it)."""
        user_id = await self._existing_user(localpart)
        status, answer = await self._appservice.act_as_user(
            user_id, "POST", f"{_V3}/account/deactivate", body={"erase": erase}
        )
        if status == 401 and "flows" in answer:
            raise CannotBeDone("Deactivating a user")
        if status != 200:
            raise refused_by_homeserver(status, answer, "The homeserver refused to deactivate")
        # The homeserver removed every device and token of the user.
        self._authenticator.forget_user(user_id)
        self._approvals.revoke(user_id)
        await self._strategy.forget_user(user_id)

    async def reactivate_user(self, localpart: str) -> None:
        """``reactivate_user``: only with Synapse's admin API."""
        user_id = await self._existing_user(localpart)
        if self._admin is None:
            raise CannotBeDone("Reactivating a user")
        await self._appservice.admin_update_user(user_id, self._admin, {"deactivated": False})

    # -- devices --------------------------------------------------------------------

    async def _device(self, localpart: str, device_id: str) -> Identity:
        user_id = await self._existing_user(localpart)
        return Identity(UserID(user_id), DeviceID(device_id), localpart)

    async def upsert_device(self, localpart: str, device_id: str, display_name: str | None) -> bool:
        """``upsert_device``: whether the device was created."""
        identity = await self._device(localpart, device_id)
        _check_device_name(display_name)
        return await self._strategy.upsert_device(identity, display_name)

    async def rename_device(self, localpart: str, device_id: str, display_name: str) -> None:
        """``update_device_display_name``: 404 "Not found" for a device the user lacks."""
        identity = await self._device(localpart, device_id)
        _check_device_name(display_name)
        if not await self._strategy.rename_device(identity, display_name):
            raise MatrixError("Not found", errcode="M_NOT_FOUND", status=404)

    async def delete_device(self, localpart: str, device_id: str) -> None:
        """``delete_device``: an unknown device is fine. Every cached token of the device
        stops working at once."""
        await self._delete(await self._device(localpart, device_id))

    async def _delete(self, identity: Identity) -> None:
        self._authenticator.forget_device(identity.user_id, identity.device_id)
        await self._strategy.delete_device(identity)
        self._authenticator.forget_device(identity.user_id, identity.device_id)

    async def sync_devices(self, localpart: str, devices: Iterable[str]) -> None:
        """``sync_devices``: delete the user's devices MAS does not list (sparing the
        dehydrated device), then create the ones it lists that are missing."""
        user_id = await self._existing_user(localpart)
        current = await self._strategy.devices_of(user_id)
        dehydrated = await self._appservice.dehydrated_device(user_id)
        current.discard(dehydrated or "")
        wanted = set(devices)
        for device_id in sorted(current - wanted):
            await self._delete(Identity(UserID(user_id), DeviceID(device_id), localpart))
        for device_id in sorted(wanted - current):
            identity = Identity(UserID(user_id), DeviceID(device_id), localpart)
            await self._strategy.upsert_device(identity, None)

    # -- cross-signing ----------------------------------------------------------------

    async def allow_cross_signing_reset(self, localpart: str) -> None:
        """``allow_cross_signing_reset``: open the user's window (Synapse: a no-op for a
        user without a master key, still a success)."""
        user_id = await self._existing_user(localpart)
        status, keys = await self._appservice.act_as_user(
            user_id, "POST", f"{_V3}/keys/query", body={"device_keys": {user_id: []}}
        )
        if status != 200:
            raise refused_by_homeserver(status, keys, "The homeserver could not list the keys")
        master_keys = keys.get("master_keys")
        if not isinstance(master_keys, dict) or master_keys.get(user_id) is None:
            log.warning("allow_cross_signing_reset for a user without a master key: nothing done")
            return
        self._approvals.allow(user_id)


def _profile(user_id: str, field: str | None = None) -> str:
    path = f"{_V3}/profile/{quote(user_id, safe='')}"
    return path if field is None else f"{path}/{field}"


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _check_device_name(display_name: str | None) -> None:
    if display_name is not None and len(display_name) > MAX_DEVICE_NAME:
        raise MatrixError(
            f"Device display name is too long (max {MAX_DEVICE_NAME})",
            errcode="M_TOO_LARGE",
            status=400,
        )
