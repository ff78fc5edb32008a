"""Calls the bridge makes to the homeserver as its application service."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from bridge import USER_AGENT
from bridge.config import BridgeConfig
from bridge.errors import CannotBeDone, HomeserverUnavailable, MatrixError
from bridge.ops.metrics import Metrics

log = logging.getLogger("bridge.homeserver")

_V3 = "/_matrix/client/v3"
_RATE_LIMIT_RETRIES = 5
_RATE_LIMIT_MAX_WAIT = 5.0


async def call_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    authorization: str,
    body: object,
    params: Sequence[tuple[str, str]] = (),
    client_timeout: aiohttp.ClientTimeout,
    metrics: Metrics | None = None,
) -> tuple[int, dict[str, Any]]:
    """One JSON request of the bridge's own to the homeserver: (status, JSON object or {}).

    ``body`` None sends no body (a GET); ``authorization`` "" sends no Authorization
    header. With ``metrics``, counted as an ``appservice`` call.
    """
    headers = {"User-Agent": USER_AGENT}
    if authorization:
        headers["Authorization"] = authorization
    if body is not None:
        headers["Content-Type"] = "application/json"
    if metrics is None:
        return await _call_json(session, method, url, headers, body, params, client_timeout)
    started = time.perf_counter()
    failure = None
    try:
        status, answer = await _call_json(
            session, method, url, headers, body, params, client_timeout
        )
        if status >= 500:
            failure = "5xx"
        return status, answer
    except HomeserverUnavailable as e:
        failure = "timeout" if e.status == 504 else "refused"
        raise
    finally:
        metrics.homeserver_call_duration["appservice"].observe(time.perf_counter() - started)
        if failure is not None:
            metrics.homeserver_error["appservice", failure].inc()


async def _call_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str],
    body: object,
    params: Sequence[tuple[str, str]],
    client_timeout: aiohttp.ClientTimeout,
) -> tuple[int, dict[str, Any]]:
    try:
        async with session.request(
            method,
            url,
            params=params,
            data=None if body is None else json.dumps(body),
            headers=headers,
            timeout=client_timeout,
            allow_redirects=False,
        ) as resp:
            try:
                answer = await resp.json(content_type=None)
            except ValueError:
                answer = None
            return resp.status, answer if isinstance(answer, dict) else {}
    except TimeoutError as e:
        raise HomeserverUnavailable("The homeserver did not answer in time", status=504) from e
    except aiohttp.ClientError as e:
        log.warning("homeserver request failed: %s", type(e).__name__)
        raise HomeserverUnavailable("The homeserver is unreachable") from e


def device_path(device_id: str) -> str:
    """``/devices/{deviceId}``, the ID percent-encoded as one segment."""
    return f"{_V3}/devices/{quote(device_id, safe='')}"


def refused_by_homeserver(status: int, answer: dict[str, Any], fallback: str) -> MatrixError:
    """The homeserver's own refusal (a 4xx with its errcode and message), passed on as
    it is; anything else is the gateway's 502."""
    errcode, message = answer.get("errcode"), answer.get("error")
    if 400 <= status < 500 and status != 401 and isinstance(errcode, str):
        return MatrixError(
            message if isinstance(message, str) else fallback, errcode=errcode, status=status
        )
    return MatrixError(fallback, errcode="M_UNKNOWN", status=502)


@dataclass(frozen=True, slots=True)
class AccountState:
    """What the homeserver's admin API says of a user (Synapse ``/_synapse/admin/v2/users``)."""

    deactivated: bool = False
    locked: bool = False
    shadow_banned: bool = False

    def raise_if_barred(self, *, write: bool) -> None:
        """Refuse as Synapse refuses the user's own token: the appservice path checks none
        of these (docs/appservice-privileges.md AS-05, AS-06)."""
        if self.deactivated:
            raise MatrixError(
                "This account has been deactivated", errcode="M_USER_DEACTIVATED", status=403
            )
        if self.locked:
            raise MatrixError(
                "User account has been locked",
                errcode="M_USER_LOCKED",
                status=401,
                extra={"soft_logout": True},
            )
        if self.shadow_banned and write:
            # Synapse pretends a shadow-banned user's writes succeed; the bridge cannot
            # pretend as well, so it refuses them rather than deliver them.
            raise MatrixError(
                "This account may not make changes", status=403, errcode="M_FORBIDDEN"
            )


class AppserviceClient:
    """Registers users, creates devices (MSC4190) or logs them in, and acts as users
    (:meth:`act_as_user`), as the appservice."""

    def __init__(
        self, session: aiohttp.ClientSession, config: BridgeConfig, metrics: Metrics | None = None
    ) -> None:
        self._session = session
        self._metrics = metrics
        self._base = config.homeserver.url
        self._authorization = f"Bearer {config.appservice.as_token}"
        self._timeout = aiohttp.ClientTimeout(
            total=config.homeserver.connect_timeout + 30, connect=config.homeserver.connect_timeout
        )

    async def _call(
        self, method: str, path: str, *, body: object, params: Sequence[tuple[str, str]] = ()
    ) -> tuple[int, dict[str, Any]]:
        """One call as the appservice; a rate-limited one is tried again after the wait
        the homeserver asks for (Dendrite limits /login and /register per address even
        for appservices), a few times at most."""
        for attempt in range(_RATE_LIMIT_RETRIES + 1):
            status, answer = await call_json(
                self._session,
                method,
                self._base + path,
                authorization=self._authorization,
                body=body,
                params=params,
                client_timeout=self._timeout,
                metrics=self._metrics,
            )
            log.debug("appservice %s %s: HTTP %s", method, path, status)
            if status != 429 or attempt == _RATE_LIMIT_RETRIES:
                break
            wait = answer.get("retry_after_ms")
            delay = wait / 1000 if isinstance(wait, int | float) and wait > 0 else 0.5
            await asyncio.sleep(min(delay, _RATE_LIMIT_MAX_WAIT))
        return status, answer

    async def register_user(self, localpart: str) -> None:
        """Register ``localpart``; an existing user is fine."""
        status, answer = await self._call(
            "POST",
            f"{_V3}/register",
            body={
                "type": "m.login.application_service",
                "username": localpart,
                "inhibit_login": True,
            },
        )
        if status == 200 or answer.get("errcode") == "M_USER_IN_USE":
            return
        log.error(
            "homeserver refused to register a user: HTTP %s %s", status, answer.get("errcode")
        )
        raise MatrixError(
            "The homeserver refused to register this user", errcode="M_UNKNOWN", status=502
        )

    async def create_device(self, user_id: str, device_id: str) -> None:
        """Create (or touch) ``device_id`` of ``user_id`` with MSC4190 ``PUT /devices``."""
        status, answer = await self.put_device(user_id, device_id)
        if status in (200, 201):
            return
        log.error(
            "homeserver refused to create a device: HTTP %s %s", status, answer.get("errcode")
        )
        raise MatrixError(
            "The homeserver refused to create this device", errcode="M_UNKNOWN", status=502
        )

    async def put_device(
        self, user_id: str, device_id: str, display_name: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """MSC4190 ``PUT /devices/{id}?user_id=``: creates the device (201) or, with
        ``display_name``, renames it (200); the homeserver's answer as it is."""
        return await self.act_as_user(
            user_id,
            "PUT",
            device_path(device_id),
            body={} if display_name is None else {"display_name": display_name},
        )

    async def login(self, localpart: str, device_id: str, display_name: str | None = None) -> str:
        """A homeserver access token for ``device_id`` of ``localpart``, by appservice login.

        The homeserver creates the device if it does not exist yet (named
        ``display_name`` then).
        """
        login: dict[str, object] = {
            "type": "m.login.application_service",
            "identifier": {"type": "m.id.user", "user": localpart},
            "device_id": device_id,
        }
        if display_name is not None:
            login["initial_device_display_name"] = display_name
        status, answer = await self._call("POST", f"{_V3}/login", body=login)
        token = answer.get("access_token")
        if status == 200 and isinstance(token, str) and token:
            if answer.get("device_id", device_id) != device_id:
                # Dendrite, Conduit and Synapse all honour it; a homeserver that
                # does not would give the session someone else's device.
                raise MatrixError("The homeserver logged in another device", status=502)
            return token
        errcode = answer.get("errcode")
        if errcode == "M_USER_DEACTIVATED":
            AccountState(deactivated=True).raise_if_barred(write=False)
        if errcode == "M_USER_LOCKED":
            AccountState(locked=True).raise_if_barred(write=False)
        log.error("homeserver refused appservice login: HTTP %s %s", status, errcode)
        raise MatrixError(
            "The homeserver refused to log this device in", errcode="M_UNKNOWN", status=502
        )

    async def call_with_token(
        self, token: str, method: str, path: str, body: object
    ) -> tuple[int, dict[str, Any]]:
        """One call with a device's own homeserver token (not the appservice's)."""
        return await call_json(
            self._session,
            method,
            self._base + path,
            authorization=f"Bearer {token}",
            body=body,
            client_timeout=self._timeout,
            metrics=self._metrics,
        )

    async def logout(self, token: str) -> None:
        """End a device token the bridge obtained (the homeserver deletes its device)."""
        await self.call_with_token(token, "POST", f"{_V3}/logout", {})

    async def act_as_user(
        self,
        user_id: str,
        method: str,
        path: str,
        *,
        body: object = None,
        params: Sequence[tuple[str, str]] = (),
    ) -> tuple[int, dict[str, Any]]:
        """One call as ``user_id`` through the appservice (``as_token`` + ``?user_id=``).

        Needs no device of the user: Synapse and Dendrite both let an appservice
        act as any registered user of its namespace this way (and answer 403
        for one that is not registered). ``path`` starts with ``/_matrix/...``.
        """
        return await self._call(method, path, body=body, params=[*params, ("user_id", user_id)])

    async def user_exists(self, user_id: str) -> bool:
        """Whether ``user_id`` is registered on the homeserver (exact case), asked with
        ``whoami`` as the user: Synapse and Dendrite refuse to act as an
        unregistered user (403). A deactivated user still exists on Synapse."""
        status, answer = await self.act_as_user(user_id, "GET", f"{_V3}/account/whoami")
        if status == 200:
            return True
        if status in (403, 404):
            return False
        log.error("homeserver could not say whether a user exists: HTTP %s", status)
        raise refused_by_homeserver(status, answer, "The homeserver could not look the user up")

    async def device_exists(self, user_id: str, device_id: str) -> bool:
        """Whether the user has ``device_id`` (``GET /devices/{id}`` as the user; an
        unregistered user has none)."""
        status, answer = await self.act_as_user(user_id, "GET", device_path(device_id))
        if status == 200:
            return True
        if status in (403, 404):
            return False
        log.error("homeserver could not say whether a device exists: HTTP %s", status)
        raise refused_by_homeserver(status, answer, "The homeserver could not look the device up")

    async def devices_of(self, user_id: str) -> set[str]:
        """The IDs of the user's devices (``GET /devices`` as the user)."""
        status, answer = await self.act_as_user(user_id, "GET", f"{_V3}/devices")
        devices = answer.get("devices") or []  # Dendrite says null for none
        if status != 200 or not isinstance(devices, list):
            raise refused_by_homeserver(status, answer, "The homeserver could not list devices")
        return {
            d["device_id"]
            for d in devices
            if isinstance(d, dict) and isinstance(d.get("device_id"), str)
        }

    async def delete_device(self, user_id: str, device_id: str) -> None:
        """Delete the device as the appservice (MSC4190: no user-interactive auth on Synapse).

        An unknown device is fine. A homeserver that asks for user-interactive
        auth (401 with ``flows``) cannot do it this way: ``CannotBeDone``.
        """
        status, answer = await self.act_as_user(user_id, "DELETE", device_path(device_id), body={})
        if status in (200, 404):
            return
        if status == 401 and "flows" in answer:
            raise CannotBeDone("Deleting this device")
        raise refused_by_homeserver(status, answer, "The homeserver refused to delete the device")

    async def dehydrated_device(self, user_id: str) -> str | None:
        """The user's dehydrated device (MSC3814), where the homeserver has one for it."""
        status, answer = await self.act_as_user(
            user_id, "GET", "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device"
        )
        device_id = answer.get("device_id")
        return device_id if status == 200 and isinstance(device_id, str) else None

    async def admin_user(self, user_id: str, admin_user_id: str) -> dict[str, Any] | None:
        """Synapse's admin view of the user (``GET /_synapse/admin/v2/users``), read as
        ``admin_user_id`` (masqueraded); None when there is no such user."""
        status, answer = await self.act_as_user(
            admin_user_id, "GET", f"/_synapse/admin/v2/users/{quote(user_id, safe='')}"
        )
        if status == 404:
            return None
        if status != 200:
            log.error(
                "cannot read account states as %s: HTTP %s %s (is it a server admin?)",
                admin_user_id,
                status,
                answer.get("errcode"),
            )
            raise MatrixError(
                "The homeserver could not say whether this account may act", status=502
            )
        return answer

    async def admin_update_user(
        self, user_id: str, admin_user_id: str, changes: dict[str, object]
    ) -> None:
        """Change an existing user with Synapse's admin API (``PUT /_synapse/admin/v2/users``)."""
        status, answer = await self.act_as_user(
            admin_user_id,
            "PUT",
            f"/_synapse/admin/v2/users/{quote(user_id, safe='')}",
            body=changes,
        )
        if status != 200:
            log.error("admin API refused a user change: HTTP %s %s", status, answer.get("errcode"))
            raise refused_by_homeserver(status, answer, "The homeserver refused the change")

    async def account_state(self, user_id: str, admin_user_id: str) -> AccountState:
        """The user's state, read with the admin API as ``admin_user_id`` (masqueraded)."""
        answer = await self.admin_user(user_id, admin_user_id)
        if answer is None:
            return AccountState()  # not registered yet
        return AccountState(
            deactivated=answer.get("deactivated") is True,
            locked=answer.get("locked") is True,
            shadow_banned=answer.get("shadow_banned") is True,
        )
