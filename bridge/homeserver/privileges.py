"""Checks the homeserver skips for appservice requests, made by the bridge instead.

Under ``masquerade`` every forwarded request carries the appservice's
identity, and Synapse relaxes some checks for appservices
(docs/appservice-privileges.md lists them all). For the endpoints where the
relaxed check matters, the bridge asks the homeserver, as the same user,
what a normal user's request would have been checked against, and refuses
with the error Synapse gives a normal user.

Paths are matched as the homeserver routes them: on the raw (still
percent-encoded) path, with Synapse's own segment patterns, and captured
segments are decoded as Synapse decodes them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, unquote

from bridge.auth.identity import Identity
from bridge.errors import BadRequest, Forbidden, MatrixError, NotFound
from bridge.forward.forwarder import Forwarder
from bridge.http.paths import CLIENT

_V3 = "/_matrix/client/v3"

# Room versions in which the room's creators have unlimited power (MSC4289),
# and those whose creator is the create event's sender (MSC2175).
_CREATORS_POWER = frozenset({"12", "org.matrix.hydra.11"})
_IMPLICIT_CREATOR = _CREATORS_POWER | {"11"}


def _seg(raw: str) -> str:
    """One path segment as the homeserver's handler receives it."""
    return unquote(raw)


async def _get(forwarder: Forwarder, identity: Identity, path: str) -> tuple[int, dict[str, Any]]:
    return await forwarder.call_as(identity, "GET", path, None)


async def joined_rooms(forwarder: Forwarder, identity: Identity) -> set[str]:
    """The rooms ``identity``'s user is joined to now (``/joined_rooms`` has no shortcut)."""
    status, answer = await _get(forwarder, identity, f"{_V3}/joined_rooms")
    rooms = answer.get("joined_rooms")
    if status != 200 or not isinstance(rooms, list):
        raise MatrixError("The homeserver could not list the user's rooms", status=502)
    return {r for r in rooms if isinstance(r, str)}


async def _state(
    forwarder: Forwarder, identity: Identity, room_id: str, event_type: str, state_key: str = ""
) -> dict[str, Any] | None:
    """A state event of ``room_id`` as the user may read it (format=event), or None."""
    path = (
        f"{_V3}/rooms/{quote(room_id, safe='')}/state/"
        f"{quote(event_type, safe='')}/{quote(state_key, safe='')}?format=event"
    )
    status, answer = await _get(forwarder, identity, path)
    return answer if status == 200 else None


async def check_joined_members(
    forwarder: Forwarder, identity: Identity, match: re.Match[str]
) -> None:
    """``GET /rooms/{roomId}/joined_members``: current members only, or a world-readable
    room the user never left (Synapse's ``MessageHandler.get_joined_members``)."""
    room_id = _seg(match["room"])
    if room_id in await joined_rooms(forwarder, identity):
        return
    visibility = await _state(forwarder, identity, room_id, "m.room.history_visibility")
    if visibility is not None and _content(visibility).get("history_visibility") == (
        "world_readable"
    ):
        own = await _state(forwarder, identity, room_id, "m.room.member", identity.user_id)
        if own is None or _content(own).get("membership") in ("invite", "knock"):
            return
    raise Forbidden(
        "Getting joined members while not being a current member of the room is forbidden."
    )


async def check_device_update(
    forwarder: Forwarder, identity: Identity, match: re.Match[str]
) -> None:
    """``PUT /devices/{deviceId}`` renames a device of the user's; for an appservice it
    would create one (MSC4190) that the authentication service knows nothing of."""
    device_id = _seg(match["device"])
    status, _ = await _get(forwarder, identity, f"{_V3}/devices/{quote(device_id, safe='')}")
    if status == 404:
        raise NotFound("No device found", errcode="M_NOT_FOUND")
    if status != 200:
        raise MatrixError("The homeserver could not look up the device", status=502)


@functools.lru_cache(maxsize=8)
def _compiled(regexes: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(rx) for rx in regexes)


def check_alias_not_exclusive(exclusive_aliases: tuple[str, ...], alias: str) -> None:
    """Another appservice's exclusive alias: refused as Synapse refuses a normal user
    (``can_modify_alias``; the appservice path only looks at its own namespace)."""
    if any(rx.match(alias) for rx in _compiled(exclusive_aliases)):
        raise BadRequest("This alias is reserved by an application service.", errcode="M_EXCLUSIVE")


async def check_alias_creation(forwarder: Forwarder, identity: Identity, room_id: object) -> None:
    """``PUT /directory/room/{alias}``: the user must be in the room
    (``DirectoryHandler.create_association``; the appservice path skips it)."""
    if not isinstance(room_id, str) or room_id not in await joined_rooms(forwarder, identity):
        raise Forbidden("You must be in the room to create an alias for it")


async def check_alias_deletion(
    forwarder: Forwarder, identity: Identity, match: re.Match[str]
) -> None:
    """``DELETE /directory/room/{alias}``: the appservice path deletes any alias; a user
    needs enough power in the alias's room to change its canonical alias
    (``DirectoryHandler._user_can_delete_alias``; the creator rule cannot be
    checked from outside the homeserver, so an alias's creator without that
    power is refused here, where Synapse would let them)."""
    alias = _seg(match["alias"])
    status, answer = await _get(
        forwarder, identity, f"{_V3}/directory/room/{quote(alias, safe='')}"
    )
    if status == 404:
        raise NotFound("Unknown room alias", errcode="M_NOT_FOUND")
    room_id = answer.get("room_id")
    if status != 200 or not isinstance(room_id, str):
        raise MatrixError("The homeserver could not resolve the alias", status=502)
    if room_id in await joined_rooms(forwarder, identity):
        create = await _state(forwarder, identity, room_id, "m.room.create")
        power = await _state(forwarder, identity, room_id, "m.room.power_levels")
        if create is not None and _may_send_canonical_alias(identity.user_id, create, power):
            return
    raise Forbidden("You don't have permission to delete the alias.")


def _content(event: dict[str, Any]) -> dict[str, Any]:
    content = event.get("content")
    return content if isinstance(content, dict) else {}


def _may_send_canonical_alias(
    user_id: str, create: dict[str, Any], power: dict[str, Any] | None
) -> bool:
    """Synapse's ``check_can_change_room_list`` level test (``event_auth`` rules)."""
    create_content = _content(create)
    version = str(create_content.get("room_version", "1"))
    if version in _CREATORS_POWER:
        extra = create_content.get("additional_creators")
        creators = {create.get("sender"), *(extra if isinstance(extra, list) else [])}
        if user_id in creators:
            return True
    try:
        if power is None:
            creator = (
                create.get("sender")
                if version in _IMPLICIT_CREATOR
                else create_content.get("creator")
            )
            return user_id == creator  # 100 for the creator, 0 for all; the level needed is 0
        levels = _content(power)
        users = levels.get("users")
        user_level = users.get(user_id) if isinstance(users, dict) else None
        if user_level is None:
            user_level = levels.get("users_default", 0)
        events = levels.get("events")
        send_level = events.get("m.room.canonical_alias") if isinstance(events, dict) else None
        if send_level is None:
            send_level = levels.get("state_default", 50)
        return int(user_level) >= int(send_level)
    except (TypeError, ValueError):
        return False


Guard = Callable[[Forwarder, Identity, "re.Match[str]"], Awaitable[None]]

# (method, raw-path pattern, check) for requests the homeserver would not check
# as it checks a normal user's. Alias creation needs the body and is wired in
# bridge.routes.client.
GUARDS: list[tuple[str, re.Pattern[str], Guard]] = [
    ("GET", re.compile(rf"{CLIENT}/rooms/(?P<room>[^/]*)/joined_members"), check_joined_members),
    ("PUT", re.compile(rf"{CLIENT}/devices/(?P<device>[^/]*)"), check_device_update),
    ("DELETE", re.compile(rf"{CLIENT}/directory/room/(?P<alias>[^/]*)"), check_alias_deletion),
]
ALIAS_CREATION = re.compile(rf"{CLIENT}/directory/room/(?P<alias>[^/]*)")
CREATE_ROOM = re.compile(rf"{CLIENT}/createRoom")


async def check(forwarder: Forwarder, identity: Identity, method: str, raw_path: str) -> None:
    """Run the guard for ``method raw_path``, if there is one."""
    for guard_method, pattern, guard in GUARDS:
        if method == guard_method and (match := pattern.fullmatch(raw_path)):
            await guard(forwarder, identity, match)
            return
