"""What the homeserver supports, asked through the appservice before any user is served.

Three questions decide which identity strategies can work:

- **appservice login**: does ``m.login.application_service`` with a
  ``device_id`` give a token for that device? (``device_login``; Synapse
  refuses it to registrations with ``io.element.msc4190``.)
- **device creation** (MSC4190): does ``PUT /devices/{id}?user_id=`` create
  a device? (Dendrite and Conduit answer 404.)
- **device masquerading** (MSC4326): does ``?user_id=&device_id=`` really act
  as that device? Dendrite answers 200 and ignores it, so the probe checks
  what ``whoami`` says, not the status.

``masquerade`` needs the last two; ``device_login`` the first. The probe acts
as the appservice's own sender user, and removes what it created.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from bridge.config import BridgeConfig, Strategy
from bridge.errors import BridgeError, ConfigError
from bridge.homeserver.appservice import call_json

log = logging.getLogger("bridge.homeserver")

_V3 = "/_matrix/client/v3"


class ProbeFailed(BridgeError):
    """The homeserver could not be asked (``status`` None), or refused the appservice
    itself (``status`` and ``errcode``: its answer)."""

    def __init__(self, message: str, status: int | None = None, errcode: object = "") -> None:
        super().__init__(message)
        self.status = status
        self.errcode = errcode


class StrategyUnsupported(ConfigError):
    """The configured strategy cannot work with this homeserver (exit code 11)."""


@dataclass(frozen=True)
class ProbeResult:
    """What the homeserver answered."""

    versions: tuple[str, ...]
    appservice_login: bool
    device_creation: bool
    device_masquerade: bool

    @property
    def strategies(self) -> tuple[Strategy, ...]:
        """The identity strategies that work with this homeserver and registration."""
        found: list[Strategy] = []
        if self.appservice_login:
            found.append("device_login")
        if self.device_creation and self.device_masquerade:
            found.append("masquerade")
        return tuple(found)

    def why_not(self, strategy: Strategy) -> str:
        """Why ``strategy`` cannot work here, in the admin's words."""
        if strategy == "device_login":
            return (
                "the homeserver refuses appservice login with a device_id "
                "(on Synapse: remove io.element.msc4190 from the registration)"
            )
        missing = []
        if not self.device_creation:
            missing.append("appservice device creation (MSC4190: PUT /devices/{id}?user_id=)")
        if not self.device_masquerade:
            missing.append("device masquerading (MSC4326: ?device_id= is not honoured)")
        return "the homeserver lacks " + " and ".join(missing)

    def summary(self) -> str:
        return (
            f"appservice login: {_yes(self.appservice_login)}; "
            f"device creation (MSC4190): {_yes(self.device_creation)}; "
            f"device masquerading (MSC4326): {_yes(self.device_masquerade)}; "
            f"strategies: {', '.join(self.strategies) or 'none'}"
        )


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


class Probe:
    """The probe's steps, in order (``doctor`` reports each): :meth:`versions`,
    :meth:`check_as_token`, :meth:`result`. Each raises :class:`ProbeFailed`."""

    def __init__(self, session: aiohttp.ClientSession, config: BridgeConfig) -> None:
        self.session = session
        self.base = config.homeserver.url
        self.server_name = config.server_name
        self.sender_localpart = config.appservice.sender_localpart
        self.sender = f"@{self.sender_localpart}:{self.server_name}"
        self.as_authorization = f"Bearer {config.appservice.as_token}"
        self.timeout = aiohttp.ClientTimeout(total=config.homeserver.connect_timeout + 20)

    async def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        authorization: str | None = None,
        params: tuple[tuple[str, str], ...] = (),
    ) -> tuple[int, dict[str, Any]]:
        try:
            return await call_json(
                self.session,
                method,
                self.base + path,
                authorization=self.as_authorization if authorization is None else authorization,
                body=body,
                params=params,
                client_timeout=self.timeout,
            )
        except Exception as e:
            raise ProbeFailed(f"the homeserver could not be asked: {type(e).__name__}: {e}") from e

    async def versions(self) -> tuple[str, ...] | None:
        """The spec versions the homeserver lists (None: its answer has no list)."""
        # Public, and asked without the as_token: Synapse refuses a wrong token even
        # here (401), and check_as_token names that better.
        status, answer = await self.call("GET", "/_matrix/client/versions", authorization="")
        if status != 200:
            raise ProbeFailed(f"GET /_matrix/client/versions answered HTTP {status}", status)
        listed = answer.get("versions")
        return tuple(v for v in listed if isinstance(v, str)) if isinstance(listed, list) else None

    async def check_as_token(self) -> None:
        """Whether the homeserver accepts the as_token as the appservice's sender."""
        status, whoami = await self.call("GET", f"{_V3}/account/whoami")
        if status != 200 or whoami.get("user_id") != self.sender:
            errcode = whoami.get("errcode", "")
            raise ProbeFailed(
                f"the homeserver does not accept the bridge's as_token as {self.sender} "
                f"(HTTP {status} {errcode}): is the registration loaded?",
                status,
                errcode,
            )

    async def result(self, versions: tuple[str, ...]) -> ProbeResult:
        """What the identity strategies need, asked as the sender."""
        login = await _appservice_login(self, self.sender_localpart)
        creation, masquerade = await _device_masquerade(self, self.sender)
        return ProbeResult(versions, login, creation, masquerade)


async def probe(session: aiohttp.ClientSession, config: BridgeConfig) -> ProbeResult:
    """Ask the homeserver; :class:`ProbeFailed` if it cannot be reached or refuses the as_token."""
    steps = Probe(session, config)
    versions = await steps.versions()
    await steps.check_as_token()
    return await steps.result(versions or ())


def _probe_device() -> str:
    """A device ID of the probe's own: instances starting at once must not share one
    (one's clean-up would end the other's probe). Each is removed after use."""
    return "BRIDGEPROBE" + secrets.token_hex(6).upper()


async def _appservice_login(hs: Probe, sender_localpart: str) -> bool:
    device_id = _probe_device()
    status, answer = await hs.call(
        "POST",
        f"{_V3}/login",
        {
            "type": "m.login.application_service",
            "identifier": {"type": "m.id.user", "user": sender_localpart},
            "device_id": device_id,
        },
    )
    token = answer.get("access_token")
    if status != 200 or not isinstance(token, str):
        return False
    # The login's own answer names the device (whoami of the sender's token says
    # nothing of devices on Synapse); then the probe's device goes again: logged out
    # (Dendrite), else deleted as the appservice (Synapse refuses the sender's
    # logout, and deletes devices for appservices without interactive auth).
    status, _ = await hs.call("POST", f"{_V3}/logout", {}, authorization=f"Bearer {token}")
    if status != 200:
        await hs.call(
            "DELETE",
            f"{_V3}/devices/{device_id}",
            {},
            params=(("user_id", f"@{sender_localpart}:{hs.server_name}"),),
        )
    return answer.get("device_id") == device_id


async def _device_masquerade(hs: Probe, sender: str) -> tuple[bool, bool]:
    device_id = _probe_device()
    path = f"{_V3}/devices/{quote(device_id, safe='')}"
    status, _ = await hs.call("PUT", path, {}, params=(("user_id", sender),))
    if status not in (200, 201):
        return False, False
    try:
        _, whoami = await hs.call(
            "GET",
            f"{_V3}/account/whoami",
            params=(("user_id", sender), ("device_id", device_id)),
        )
        return True, whoami.get("device_id") == device_id
    finally:
        await hs.call("DELETE", path, {}, params=(("user_id", sender),))


async def check_strategy(session: aiohttp.ClientSession, config: BridgeConfig) -> ProbeResult:
    """Probe, and refuse (:class:`StrategyUnsupported`) a strategy that cannot work."""
    result = await probe(session, config)
    strategy = config.homeserver.strategy
    if strategy not in result.strategies:
        raise StrategyUnsupported(
            "homeserver.strategy",
            f"{strategy} cannot work with {config.homeserver.url}: {result.why_not(strategy)} "
            f"(probe: {result.summary()})",
        )
    log.info("homeserver probe: %s", result.summary())
    return result
