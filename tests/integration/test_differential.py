"""Differential tests: through the bridge a user can do no more than with a plain token.

Under ``masquerade`` the bridge acts on Synapse with appservice identity (``as_token``
+ ``user_id`` + ``device_id``), and Synapse relaxes many checks for appservices;
under ``device_login`` it forwards with a device token of its own per (user, device),
obtained by appservice login, which must be worth no more than a plain token either.
The whole table runs under each strategy (``STRATEGIES``). Each case below is
a request a normal user must not be able to make (or, as a control, one they may).
It is sent twice, each time in a fresh world of its own (new attacker and victim
users, new rooms): once through the bridge with the attacker's OAuth token, and once
straight to Synapse with a plain access token of the same kind of user. Both
outcomes, with what Synapse really holds afterwards (read directly, as the victim or
the admin), must be the same. A difference is a leak.

Cases marked ``bridge_may_refuse`` are stricter through the bridge by design (form
bodies, the doors the authentication service owns): there the bridge may refuse what
Synapse allows, but never succeed differently.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlencode

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from bridge.app import create_app
from bridge.config import AppserviceConfig, Strategy
from tests.integration.conftest import (
    BridgeClient,
    Login,
    PlainLogin,
    auth,
    new_localpart,
)
from tests.support.issuer import TestIssuer
from tests.support.stack import PLAIN_LOGIN_APPSERVICE_ID, SERVER_NAME, bridge_config
from tests.support.synapse import SynapseServer

# The identity strategies that have landed; each runs the whole table.
STRATEGIES: list[Strategy] = ["masquerade", "device_login"]
# DIFF_DUMP=<file> appends both outcomes of every case there, agreeing ones too,
# for checking by hand what each side did.
DUMP = os.environ.get("DIFF_DUMP", "")

V1 = "/_matrix/client/v1"
V3 = "/_matrix/client/v3"
MEDIA_UPLOAD = "/_matrix/media/v3/upload"
ADMIN = "/_synapse/admin"

ATTACKER_DEVICE = "DEVA"
VICTIM_DEVICE = "VICDEV"
SETUP_DEVICE = "SETUP"
BYSTANDER_DEVICE = "BYDEV"

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
FORM_ODD_CASE = "APPLICATION/X-WWW-FORM-URLENCODED; charset=utf-8"
FORM_ENCODED_WORD = "=?utf-8?b?" + base64.b64encode(FORM.encode()).decode() + "?="
MULTIPART = "multipart/form-data"
# A timestamp an appservice could pick with ``ts``; Synapse stamps "now" otherwise.
CHOSEN_TS = 1_000_000_000_000
NOW_SLACK_MS = 10 * 60 * 1000

Side = Literal["bridge", "direct"]
Kind = Literal["ok", "refused", "error"]


# --------------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Reply:
    """A homeserver (or bridge) answer: status and decoded JSON (or text)."""

    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def summary(self) -> str:
        if isinstance(self.body, dict):
            parts = [str(self.status), str(self.body.get("errcode", ""))]
            error = self.body.get("error")
            if error is None and "flows" in self.body:
                error = f"flows={[f.get('stages') for f in self.body['flows']]}"
            if error is not None:
                parts.append(str(error)[:140])
            return " ".join(p for p in parts if p)
        return f"{self.status} {str(self.body)[:140]}"


@dataclass(frozen=True)
class Outcome:
    """What one side got: ``refused`` (any 4xx, UIA included), ``ok``, or ``error``
    (5xx), plus what Synapse holds afterwards. ``detail`` is for humans only."""

    kind: Kind
    observed: Any = None
    detail: str = field(default="", compare=False)


def kind_of(reply: Reply) -> Kind:
    if reply.ok:
        return "ok"
    if 400 <= reply.status < 500:
        return "refused"
    return "error"


def outcome(reply: Reply, observed: Any = None) -> Outcome:
    """The outcome of a write: the state observed afterwards counts whatever the answer."""
    return Outcome(kind_of(reply), observed, reply.summary())


def read_outcome(reply: Reply, observe: Callable[[Any], Any]) -> Outcome:
    """The outcome of a read: what it revealed (``observe(body)``) when it succeeded."""
    kind = kind_of(reply)
    return Outcome(kind, observe(reply.body) if kind == "ok" else None, reply.summary())


async def _reply(resp: aiohttp.ClientResponse) -> Reply:
    text = await resp.text()
    try:
        body: Any = json.loads(text) if text else None
    except ValueError:
        body = text
    return Reply(resp.status, body)


# --------------------------------------------------------------------------- the world


@dataclass
class Person:
    """A user set up directly on Synapse, with a plain token of one device."""

    localpart: str
    device_id: str
    token: str

    @property
    def user_id(self) -> str:
        return f"@{self.localpart}:{SERVER_NAME}"


Send = Callable[[str, str, Mapping[str, str], bytes | None], Awaitable[Reply]]


class World:
    """One side's users, rooms and ways of talking to Synapse.

    ``attack`` is the one request a case is about: through the bridge with the
    attacker's OAuth token, or directly with the attacker's plain token. Everything
    else (setting the scene, observing the result) goes straight to Synapse with
    plain tokens or the admin's, the same way on both sides.
    """

    def __init__(
        self,
        side: Side,
        *,
        synapse: SynapseServer,
        http: aiohttp.ClientSession,
        plain_login: PlainLogin,
        send: Send,
        attacker_token: str,
        attacker_localpart: str,
        victim: Person,
        bridge_appservice_id: str,
    ) -> None:
        self.side = side
        self.synapse = synapse
        self.http = http
        self.plain_login = plain_login
        self._send = send
        self._attacker_token = attacker_token
        self.attacker_localpart = attacker_localpart
        self.attacker_id = f"@{attacker_localpart}:{SERVER_NAME}"
        self.victim = victim
        self.bridge_appservice_id = bridge_appservice_id
        self.log: list[str] = []
        self._setup: Person | None = None
        self._bystander: Person | None = None

    # -- the attack

    async def attack(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        raw: bytes | None = None,
        content_type: str = JSON,
        query: Mapping[str, str] | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """The attacker's request, on this side's channel. ``raw`` is sent as is."""
        if query:
            path += "?" + (query if isinstance(query, str) else urlencode(query))
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        sent = dict(auth(self._attacker_token))
        if data is not None:
            sent["Content-Type"] = content_type
        sent.update(headers or {})
        reply = await self._send(method, path, sent, data)
        self.log.append(f"{method} {self.anonymize(path)} -> {self.anonymize(reply.summary())}")
        return reply

    # -- people

    async def attacker_setup(self) -> Person:
        """The attacker's plain token on a second device, for setting the scene."""
        if self._setup is None:
            token = await self.plain_login(self.attacker_localpart, SETUP_DEVICE)
            self._setup = Person(self.attacker_localpart, SETUP_DEVICE, token)
        return self._setup

    async def bystander(self) -> Person:
        """A third user, for kicks and bans."""
        if self._bystander is None:
            localpart = new_localpart("bystander")
            token = await self.plain_login(localpart, BYSTANDER_DEVICE)
            self._bystander = Person(localpart, BYSTANDER_DEVICE, token)
        return self._bystander

    def role(self, user_id: Any) -> Any:
        """A user ID as the role it plays, so both sides compare."""
        roles = {
            self.attacker_id: "attacker",
            self.victim.user_id: "victim",
            self.synapse.admin_user_id: "admin",
        }
        if self._bystander is not None:
            roles[self._bystander.user_id] = "bystander"
        return roles.get(user_id, user_id)

    def anonymize(self, text: str) -> str:
        for user_id, name in (
            (self.attacker_id, "@attacker"),
            (self.victim.user_id, "@victim"),
            (quote(self.attacker_id, safe=""), "@attacker"),
            (quote(self.victim.user_id, safe=""), "@victim"),
        ):
            text = text.replace(user_id, name)
        return text

    # -- direct calls to Synapse (setup and observation)

    async def call(
        self,
        token: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, str] | None = None,
    ) -> Reply:
        url = self.synapse.base_url + path
        if query:
            url += "?" + urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        headers = dict(auth(token))
        if data is not None:
            headers["Content-Type"] = JSON
        async with self.http.request(
            method, URL(url, encoded=True), data=data, headers=headers
        ) as resp:
            return await _reply(resp)

    async def must(self, token: str, method: str, path: str, body: Any = None) -> Any:
        """A setup call that has to succeed."""
        reply = await self.call(token, method, path, body)
        if not reply.ok:
            raise AssertionError(f"setup failed: {method} {path}: {reply.summary()}")
        return reply.body

    async def admin(self, method: str, path: str, body: Any = None) -> Reply:
        return await self.call(self.synapse.admin_token, method, path, body)

    async def create_room(self, who: Person, **body: Any) -> str:
        answer = await self.must(who.token, "POST", f"{V3}/createRoom", body)
        return str(answer["room_id"])

    async def join(self, who: Person, room_id: str) -> None:
        await self.must(who.token, "POST", f"{V3}/join/{quote(room_id)}", {})

    async def invite(self, who: Person, room_id: str, user_id: str) -> None:
        await self.must(
            who.token, "POST", f"{V3}/rooms/{quote(room_id)}/invite", {"user_id": user_id}
        )

    async def send_text(self, who: Person, room_id: str, text: str) -> str:
        path = f"{V3}/rooms/{quote(room_id)}/send/m.room.message/{secrets.token_hex(8)}"
        answer = await self.must(who.token, "PUT", path, {"msgtype": "m.text", "body": text})
        return str(answer["event_id"])

    async def victim_room(self) -> tuple[str, str]:
        """A private room of the victim's the attacker is not in: (room, a message)."""
        room = await self.create_room(self.victim, preset="private_chat", name="victim's secret")
        event = await self.send_text(self.victim, room, "secret words")
        return room, event

    async def shared_room(self) -> tuple[str, str]:
        """The victim's private room; the attacker joined it without any power."""
        room, event = await self.victim_room()
        attacker = await self.attacker_setup()
        await self.invite(self.victim, room, self.attacker_id)
        await self.join(attacker, room)
        return room, event

    async def shared_room_with_bystander(self) -> str:
        room, _ = await self.shared_room()
        bystander = await self.bystander()
        await self.invite(self.victim, room, bystander.user_id)
        await self.join(bystander, room)
        return room

    async def attacker_room(self) -> str:
        """A room the attacker created (and so fully controls)."""
        return await self.create_room(await self.attacker_setup(), preset="private_chat")

    # -- observations (straight from Synapse, as the admin or the victim)

    async def state(self, room_id: str) -> list[dict[str, Any]]:
        reply = await self.admin("GET", f"{ADMIN}/v1/rooms/{quote(room_id)}/state")
        assert reply.ok, reply.summary()
        return list(reply.body["state"])

    async def membership(self, room_id: str, user_id: str) -> str | None:
        for event in await self.state(room_id):
            if event["type"] == "m.room.member" and event["state_key"] == user_id:
                return str(event["content"]["membership"])
        return None

    async def memberships(self, room_id: str) -> dict[str, str]:
        return {
            str(self.role(e["state_key"])): e["content"]["membership"]
            for e in await self.state(room_id)
            if e["type"] == "m.room.member"
        }

    async def state_content(self, room_id: str, event_type: str, key: str = "") -> Any:
        for event in await self.state(room_id):
            if event["type"] == event_type and event["state_key"] == key:
                return event["content"]
        return None

    async def timeline(self, room_id: str) -> list[dict[str, Any]]:
        """The room's latest events, newest first."""
        reply = await self.admin(
            "GET", f"{ADMIN}/v1/rooms/{quote(room_id)}/messages?dir=b&limit=50"
        )
        assert reply.ok, reply.summary()
        return list(reply.body["chunk"])

    async def messages(self, room_id: str) -> list[tuple[Any, Any]]:
        """(sender role, body) of every m.room.message, oldest first."""
        return [
            (self.role(e["sender"]), e["content"].get("body"))
            for e in reversed(await self.timeline(room_id))
            if e["type"] == "m.room.message"
        ]

    async def latest(self, room_id: str, event_type: str) -> dict[str, Any] | None:
        for event in await self.timeline(room_id):
            if event["type"] == event_type:
                return event
        return None

    async def devices(self, user_id: str) -> list[str]:
        reply = await self.admin("GET", f"{ADMIN}/v2/users/{quote(user_id)}/devices")
        assert reply.ok, reply.summary()
        return sorted(d["device_id"] for d in reply.body["devices"])

    async def device_names(self, user_id: str) -> dict[str, Any]:
        reply = await self.admin("GET", f"{ADMIN}/v2/users/{quote(user_id)}/devices")
        assert reply.ok, reply.summary()
        return {d["device_id"]: d.get("display_name") for d in reply.body["devices"]}

    async def displayname(self, user_id: str) -> Any:
        """The display name, with a user's default one (the localpart) as its role."""
        reply = await self.admin("GET", f"{V3}/profile/{quote(user_id)}")
        if not reply.ok:
            return None
        name = reply.body.get("displayname")
        defaults = {self.attacker_localpart: "attacker", self.victim.localpart: "victim"}
        return f"<default of {defaults[name]}>" if name in defaults else name

    async def media_count(self, user_id: str) -> int:
        reply = await self.admin("GET", f"{ADMIN}/v1/users/{quote(user_id)}/media")
        assert reply.ok, reply.summary()
        return int(reply.body["total"])

    async def media_owners(self) -> dict[str, int]:
        return {
            "attacker": await self.media_count(self.attacker_id),
            "victim": await self.media_count(self.victim.user_id),
        }

    async def alias_target(self, alias: str) -> str | None:
        reply = await self.admin("GET", f"{V3}/directory/room/{quote(alias, safe='')}")
        return str(reply.body["room_id"]) if reply.ok else None

    async def user_account_data(self, who: Person, event_type: str) -> Any:
        path = f"{V3}/user/{quote(who.user_id)}/account_data/{event_type}"
        reply = await self.call(who.token, "GET", path)
        return reply.body if reply.ok else None

    async def room_account_data(self, who: Person, room_id: str, event_type: str) -> Any:
        path = f"{V3}/user/{quote(who.user_id)}/rooms/{quote(room_id)}/account_data/{event_type}"
        reply = await self.call(who.token, "GET", path)
        return reply.body if reply.ok else None

    async def master_key(self, user_id: str) -> Any:
        reply = await self.admin("POST", f"{V3}/keys/query", {"device_keys": {user_id: []}})
        assert reply.ok, reply.summary()
        keys = reply.body.get("master_keys", {}).get(user_id)
        return None if keys is None else keys["keys"]

    async def one_time_key_counts(self, who: Person) -> dict[str, int]:
        reply = await self.call(who.token, "POST", f"{V3}/keys/upload", {})
        assert reply.ok, reply.summary()
        return {k: v for k, v in reply.body.get("one_time_key_counts", {}).items() if v}

    async def user_exists(self, user_id: str) -> bool:
        return (await self.admin("GET", f"{ADMIN}/v2/users/{quote(user_id)}")).ok

    async def is_admin(self, user_id: str) -> Any:
        reply = await self.admin("GET", f"{ADMIN}/v2/users/{quote(user_id)}")
        return reply.body.get("admin") if reply.ok else None

    async def is_deactivated(self, user_id: str) -> Any:
        reply = await self.admin("GET", f"{ADMIN}/v2/users/{quote(user_id)}")
        return reply.body.get("deactivated") if reply.ok else None

    def when(self, event: Mapping[str, Any] | None) -> str | None:
        """``now`` or the chosen timestamp, for an event's ``origin_server_ts``."""
        if event is None:
            return None
        ts = int(event["origin_server_ts"])
        return "now" if abs(ts - time.time() * 1000) < NOW_SLACK_MS else f"ts={ts}"


# --------------------------------------------------------------------------- helpers


def injected(w: World, sep: str = "&", *, ts: bool = False) -> str:
    """Form fields hidden in a JSON string value. Twisted parses a form-typed POST body
    (split on ``&`` and ``;``) into the request's arguments, over the query's: over the
    ``user_id``/``device_id`` the bridge set, or adding a ``ts`` it stripped. The body
    stays valid JSON, so Synapse still accepts it. Default: the victim's identity."""
    if ts:
        fields = [f"ts={CHOSEN_TS}"]
    else:
        fields = [f"user_id={w.victim.user_id}", f"device_id={w.victim.device_id}"]
    return sep + sep.join(fields) + sep


def multipart(fields: Mapping[str, str]) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type. (Synapse itself answers 415 to
    every multipart POST since GHSA-rfq8-j7rh-8hf2; these cases guard that.)"""
    boundary = "diff" + secrets.token_hex(8)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    ]
    body = "".join(parts) + f"--{boundary}--\r\n"
    return body.encode(), f"{MULTIPART}; boundary={boundary}"


def victim_query(w: World) -> dict[str, str]:
    return {"user_id": w.victim.user_id, "device_id": w.victim.device_id}


def r(room_id: str) -> str:
    return f"{V3}/rooms/{quote(room_id)}"


def u(user_id: str) -> str:
    return quote(user_id)


def new_alias(name: str) -> str:
    return f"#{new_localpart(name)}:{SERVER_NAME}"


def alias_path(alias: str) -> str:
    return f"{V3}/directory/room/{quote(alias, safe='')}"


def fake_key() -> str:
    return secrets.token_urlsafe(32).rstrip("=").replace("-", "A").replace("_", "B")


def master_key_for(user_id: str) -> dict[str, Any]:
    public = fake_key()
    return {"user_id": user_id, "usage": ["master"], "keys": {f"ed25519:{public}": public}}


def one_time_keys() -> dict[str, str]:
    return {f"curve25519:{secrets.token_hex(4)}": fake_key()}


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    id: str
    run: Callable[[World], Awaitable[Outcome]]
    bridge_may_refuse: bool = False


CASES: list[Case] = []


def case(
    case_id: str, *, bridge_may_refuse: bool = False
) -> Callable[[Callable[[World], Awaitable[Outcome]]], Callable[[World], Awaitable[Outcome]]]:
    def register(
        run: Callable[[World], Awaitable[Outcome]],
    ) -> Callable[[World], Awaitable[Outcome]]:
        CASES.append(Case(case_id, run, bridge_may_refuse))
        return run

    return register


# ---- identity injection through the query string


@case("whoami-as-victim-via-query")
async def _(w: World) -> Outcome:
    reply = await w.attack("GET", f"{V3}/account/whoami", query=victim_query(w))
    return read_outcome(reply, lambda b: (w.role(b["user_id"]), b.get("device_id")))


@case("whoami-as-victim-device-via-query-msc3202-device_id")
async def _(w: World) -> Outcome:
    query = {"org.matrix.msc3202.device_id": w.victim.device_id, "user_id": w.victim.user_id}
    reply = await w.attack("GET", f"{V3}/account/whoami", query=query)
    return read_outcome(reply, lambda b: (w.role(b["user_id"]), b.get("device_id")))


@case("send-as-victim-via-query")
async def _(w: World) -> Outcome:
    room, _ = await w.shared_room()
    reply = await w.attack(
        "PUT",
        f"{r(room)}/send/m.room.message/{secrets.token_hex(6)}",
        body={"msgtype": "m.text", "body": "injected"},
        query=victim_query(w),
    )
    return outcome(reply, await w.messages(room))


@case("send-as-victim-via-query-semicolons")
async def _(w: World) -> Outcome:
    room, _ = await w.shared_room()
    query = f"x=1;user_id={quote(w.victim.user_id)};device_id={w.victim.device_id}"
    reply = await w.attack(
        "PUT",
        f"{r(room)}/send/m.room.message/{secrets.token_hex(6)}",
        body={"msgtype": "m.text", "body": "injected"},
        query=query,
    )
    return outcome(reply, await w.messages(room))


@case("send-with-chosen-ts-via-query")
async def _(w: World) -> Outcome:
    room, _ = await w.shared_room()
    reply = await w.attack(
        "PUT",
        f"{r(room)}/send/m.room.message/{secrets.token_hex(6)}",
        body={"msgtype": "m.text", "body": "back to the past"},
        query={"ts": str(CHOSEN_TS)},
    )
    return outcome(reply, w.when(await w.latest(room, "m.room.message")))


@case("state-with-chosen-ts-via-query")
async def _(w: World) -> Outcome:
    room = await w.attacker_room()
    reply = await w.attack(
        "PUT",
        f"{r(room)}/state/m.room.topic/",
        body={"topic": "back to the past"},
        query={"ts": str(CHOSEN_TS)},
    )
    return outcome(reply, w.when(await w.latest(room, "m.room.topic")))


@case("send-with-victim-access-token-in-query")
async def _(w: World) -> Outcome:
    room, _ = await w.shared_room()
    reply = await w.attack(
        "PUT",
        f"{r(room)}/send/m.room.message/{secrets.token_hex(6)}",
        body={"msgtype": "m.text", "body": "whose token?"},
        query={"access_token": w.victim.token},
    )
    return outcome(reply, await w.messages(room))


@case("state-as-victim-via-query")
async def _(w: World) -> Outcome:
    room, _ = await w.shared_room()
    reply = await w.attack(
        "PUT", f"{r(room)}/state/m.room.name/", body={"name": "pwned"}, query=victim_query(w)
    )
    return outcome(reply, await w.state_content(room, "m.room.name"))


@case("leave-as-victim-via-query")
async def _(w: World) -> Outcome:
    room, _ = await w.shared_room()
    reply = await w.attack("POST", f"{r(room)}/leave", body={}, query=victim_query(w))
    return outcome(reply, await w.memberships(room))


@case("kick-as-victim-via-query")
async def _(w: World) -> Outcome:
    room = await w.shared_room_with_bystander()
    bystander = await w.bystander()
    reply = await w.attack(
        "POST", f"{r(room)}/kick", body={"user_id": bystander.user_id}, query=victim_query(w)
    )
    return outcome(reply, await w.memberships(room))


@case("invite-self-as-victim-via-query")
async def _(w: World) -> Outcome:
    room, _ = await w.victim_room()
    reply = await w.attack(
        "POST", f"{r(room)}/invite", body={"user_id": w.attacker_id}, query=victim_query(w)
    )
    return outcome(reply, await w.memberships(room))


@case("join-victim-room-as-victim-via-query")
async def _(w: World) -> Outcome:
    room, _ = await w.victim_room()
    reply = await w.attack("POST", f"{V3}/join/{quote(room)}", body={}, query=victim_query(w))
    return outcome(reply, await w.memberships(room))


@case("displayname-of-victim-via-query")
async def _(w: World) -> Outcome:
    reply = await w.attack(
        "PUT",
        f"{V3}/profile/{u(w.victim.user_id)}/displayname",
        body={"displayname": "pwned"},
        query=victim_query(w),
    )
    return outcome(reply, await w.displayname(w.victim.user_id))


@case("openid-token-of-victim-via-query")
async def _(w: World) -> Outcome:
    reply = await w.attack(
        "POST",
        f"{V3}/user/{u(w.victim.user_id)}/openid/request_token",
        body={},
        query=victim_query(w),
    )
    return read_outcome(reply, lambda b: sorted(b))


@case("media-upload-as-victim-via-query")
async def _(w: World) -> Outcome:
    reply = await w.attack(
        "POST",
        MEDIA_UPLOAD,
        raw=b"attacker's bytes",
        content_type="text/plain",
        query=victim_query(w),
    )
    return outcome(reply, await w.media_owners())


@case("keys-upload-for-own-other-device-via-query")
async def _(w: World) -> Outcome:
    attacker = await w.attacker_setup()
    reply = await w.attack(
        "POST",
        f"{V3}/keys/upload",
        body={"one_time_keys": one_time_keys()},
        query={"device_id": SETUP_DEVICE},
    )
    return outcome(reply, await w.one_time_key_counts(attacker))


@case("keys-upload-for-victim-device-via-query")
async def _(w: World) -> Outcome:
    reply = await w.attack(
        "POST", f"{V3}/keys/upload", body={"one_time_keys": one_time_keys()}, query=victim_query(w)
    )
    return outcome(reply, await w.one_time_key_counts(w.victim))


@case("presence-of-victim-via-query")
async def _(w: World) -> Outcome:
    reply = await w.attack(
        "PUT",
        f"{V3}/presence/{u(w.victim.user_id)}/status",
        body={"presence": "online", "status_msg": "pwned"},
        query=victim_query(w),
    )
    return outcome(reply)


@case("account-data-of-victim-via-query")
async def _(w: World) -> Outcome:
    reply = await w.attack(
        "PUT",
        f"{V3}/user/{u(w.victim.user_id)}/account_data/org.example.diff",
        body={"pwned": True},
        query=victim_query(w),
    )
    return outcome(reply, await w.user_account_data(w.victim, "org.example.diff"))


# ---- identity injection through a form body (Twisted parses it into the query args)


async def _send_via_form(w: World, content_type: str, sep: str) -> Outcome:
    room, _ = await w.shared_room()
    reply = await w.attack(
        "POST",
        f"{r(room)}/send/m.room.message",
        raw=json.dumps({"msgtype": "m.text", "body": injected(w, sep)}).encode(),
        content_type=content_type,
    )
    return outcome(reply, [sender for sender, _ in await w.messages(room)])


@case("send-as-victim-via-form-body", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    return await _send_via_form(w, FORM, "&")


@case("send-as-victim-via-form-body-odd-case-charset", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    return await _send_via_form(w, FORM_ODD_CASE, "&")


@case("send-as-victim-via-form-body-rfc2047-content-type", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    # Twisted reads Content-Type with the e-mail parser, which decodes encoded words.
    return await _send_via_form(w, FORM_ENCODED_WORD, "&")


@case("send-as-victim-via-form-body-semicolons", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    return await _send_via_form(w, FORM, ";")


@case("send-with-chosen-ts-via-form-body", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    room, _ = await w.shared_room()
    reply = await w.attack(
        "POST",
        f"{r(room)}/send/m.room.message",
        raw=json.dumps({"msgtype": "m.text", "body": injected(w, ts=True)}).encode(),
        content_type=FORM,
    )
    return outcome(reply, w.when(await w.latest(room, "m.room.message")))


@case("send-with-victim-access-token-via-form-body", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    room, _ = await w.shared_room()
    text = f"&access_token={w.victim.token}&"
    reply = await w.attack(
        "POST",
        f"{r(room)}/send/m.room.message",
        raw=json.dumps({"msgtype": "m.text", "body": text}).encode(),
        content_type=FORM,
    )
    return outcome(reply, [sender for sender, _ in await w.messages(room)])


@case("leave-as-victim-via-form-body", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    room, _ = await w.shared_room()
    reply = await w.attack(
        "POST",
        f"{r(room)}/leave",
        raw=json.dumps({"reason": injected(w)}).encode(),
        content_type=FORM,
    )
    return outcome(reply, await w.memberships(room))


@case("leave-as-victim-via-multipart", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    room, _ = await w.shared_room()
    raw, content_type = multipart(victim_query(w))
    reply = await w.attack("POST", f"{r(room)}/leave", raw=raw, content_type=content_type)
    return outcome(reply, await w.memberships(room))


@case("kick-as-victim-via-form-body", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    room = await w.shared_room_with_bystander()
    bystander = await w.bystander()
    reply = await w.attack(
        "POST",
        f"{r(room)}/kick",
        raw=json.dumps({"user_id": bystander.user_id, "reason": injected(w)}).encode(),
        content_type=FORM,
    )
    return outcome(reply, await w.memberships(room))


@case("ban-as-victim-via-form-body", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    room = await w.shared_room_with_bystander()
    bystander = await w.bystander()
    reply = await w.attack(
        "POST",
        f"{r(room)}/ban",
        raw=json.dumps({"user_id": bystander.user_id, "reason": injected(w)}).encode(),
        content_type=FORM,
    )
    return outcome(reply, await w.memberships(room))


@case("invite-self-into-victim-room-via-form-body", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    room, _ = await w.victim_room()
    reply = await w.attack(
        "POST",
        f"{r(room)}/invite",
        raw=json.dumps({"user_id": w.attacker_id, "reason": injected(w)}).encode(),
        content_type=FORM,
    )
    return outcome(reply, await w.memberships(room))


@case("force-victim-to-join-via-form-body", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    room = await w.attacker_room()
    await w.invite(await w.attacker_setup(), room, w.victim.user_id)
    reply = await w.attack(
        "POST",
        f"{V3}/join/{quote(room)}",
        raw=json.dumps({"reason": injected(w)}).encode(),
        content_type=FORM,
    )
    return outcome(reply, await w.memberships(room))


@case("redact-victim-message-as-victim-via-form-body", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    room, event = await w.shared_room()
    reply = await w.attack(
        "POST",
        f"{r(room)}/redact/{quote(event)}",
        raw=json.dumps({"reason": injected(w)}).encode(),
        content_type=FORM,
    )
    return outcome(reply, await w.messages(room))


@case("create-room-as-victim-via-form-body", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    reply = await w.attack(
        "POST",
        f"{V3}/createRoom",
        raw=json.dumps({"name": injected(w)}).encode(),
        content_type=FORM,
    )
    if not reply.ok:
        return outcome(reply)
    details = await w.admin("GET", f"{ADMIN}/v1/rooms/{quote(reply.body['room_id'])}")
    return outcome(reply, w.role(details.body.get("creator")))


@case("openid-token-of-victim-via-form-body", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    reply = await w.attack(
        "POST",
        f"{V3}/user/{u(w.victim.user_id)}/openid/request_token",
        raw=json.dumps({"x": injected(w)}).encode(),
        content_type=FORM,
    )
    return read_outcome(reply, lambda b: sorted(b))


@case("filter-for-victim-via-form-body", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    reply = await w.attack(
        "POST",
        f"{V3}/user/{u(w.victim.user_id)}/filter",
        raw=json.dumps({"account_data": {"types": [injected(w)]}}).encode(),
        content_type=FORM,
    )
    return read_outcome(reply, lambda b: sorted(b))


@case("read-marker-of-victim-via-form-body", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    room, event = await w.shared_room()
    reply = await w.attack(
        "POST",
        f"{r(room)}/read_markers",
        raw=json.dumps({"m.fully_read": event, "x": injected(w)}).encode(),
        content_type=FORM,
    )
    marker = await w.room_account_data(w.victim, room, "m.fully_read")
    return outcome(reply, marker is not None)


@case("media-upload-as-victim-via-form-body", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    reply = await w.attack("POST", MEDIA_UPLOAD, raw=f"x{injected(w)}x".encode(), content_type=FORM)
    return outcome(reply, await w.media_owners())


@case("media-upload-as-victim-via-multipart", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    raw, content_type = multipart(victim_query(w))
    reply = await w.attack("POST", MEDIA_UPLOAD, raw=raw, content_type=content_type)
    return outcome(reply, await w.media_owners())


@case("keys-upload-for-victim-device-via-form-body", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    reply = await w.attack(
        "POST",
        f"{V3}/keys/upload",
        raw=json.dumps({"one_time_keys": one_time_keys(), "x": injected(w)}).encode(),
        content_type=FORM,
    )
    return outcome(reply, await w.one_time_key_counts(w.victim))


@case("keys-upload-for-own-other-device-via-form-body", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    attacker = await w.attacker_setup()
    reply = await w.attack(
        "POST",
        f"{V3}/keys/upload",
        raw=json.dumps(
            {"one_time_keys": one_time_keys(), "x": f"&device_id={SETUP_DEVICE}&"}
        ).encode(),
        content_type=FORM,
    )
    return outcome(reply, await w.one_time_key_counts(attacker))


@case("pusher-for-victim-via-form-body", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    pusher = {
        "kind": "http",
        "app_id": "org.example.diff",
        "pushkey": "attackers-pushkey",
        "app_display_name": "diff",
        "device_display_name": "diff",
        "lang": "en",
        # Loopback, nothing listening: the tests reach no other address, ever.
        "data": {"url": "http://127.0.0.1:9/_matrix/push/v1/notify"},
        "x": injected(w),
    }
    reply = await w.attack(
        "POST", f"{V3}/pushers/set", raw=json.dumps(pusher).encode(), content_type=FORM
    )
    victims = await w.call(w.victim.token, "GET", f"{V3}/pushers")
    assert victims.ok, victims.summary()
    return outcome(reply, [p["pushkey"] for p in victims.body["pushers"]])


@case("cross-signing-reset-of-victim-via-form-body", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    original = master_key_for(w.victim.user_id)
    await w.must(
        w.victim.token, "POST", f"{V3}/keys/device_signing/upload", {"master_key": original}
    )
    reply = await w.attack(
        "POST",
        f"{V3}/keys/device_signing/upload",
        raw=json.dumps({"master_key": master_key_for(w.victim.user_id), "x": injected(w)}).encode(),
        content_type=FORM,
    )
    current = await w.master_key(w.victim.user_id)
    return outcome(reply, "original" if current == original["keys"] else current)


# ---- acting on another user's resources by path


@case("displayname-of-victim")
async def _(w: World) -> Outcome:
    reply = await w.attack(
        "PUT", f"{V3}/profile/{u(w.victim.user_id)}/displayname", body={"displayname": "pwned"}
    )
    return outcome(reply, await w.displayname(w.victim.user_id))


@case("avatar-of-victim")
async def _(w: World) -> Outcome:
    reply = await w.attack(
        "PUT",
        f"{V3}/profile/{u(w.victim.user_id)}/avatar_url",
        body={"avatar_url": "mxc://bridge.test/pwned"},
    )
    profile = await w.admin("GET", f"{V3}/profile/{u(w.victim.user_id)}")
    return outcome(reply, profile.body.get("avatar_url"))


@case("account-data-of-victim")
async def _(w: World) -> Outcome:
    reply = await w.attack(
        "PUT",
        f"{V3}/user/{u(w.victim.user_id)}/account_data/m.ignored_user_list",
        body={"ignored_users": {w.attacker_id: {}}},
    )
    data = await w.user_account_data(w.victim, "m.ignored_user_list")
    return outcome(reply, data)


@case("read-account-data-of-victim")
async def _(w: World) -> Outcome:
    await w.must(
        w.victim.token,
        "PUT",
        f"{V3}/user/{u(w.victim.user_id)}/account_data/org.example.secret",
        {"secret": "words"},
    )
    reply = await w.attack(
        "GET", f"{V3}/user/{u(w.victim.user_id)}/account_data/org.example.secret"
    )
    return read_outcome(reply, lambda b: b)


@case("room-account-data-of-victim")
async def _(w: World) -> Outcome:
    room, _ = await w.shared_room()
    reply = await w.attack(
        "PUT",
        f"{V3}/user/{u(w.victim.user_id)}/rooms/{quote(room)}/account_data/org.example.diff",
        body={"pwned": True},
    )
    return outcome(reply, await w.room_account_data(w.victim, room, "org.example.diff"))


@case("room-tag-of-victim")
async def _(w: World) -> Outcome:
    room, _ = await w.shared_room()
    reply = await w.attack(
        "PUT",
        f"{V3}/user/{u(w.victim.user_id)}/rooms/{quote(room)}/tags/u.pwned",
        body={"order": 0.5},
    )
    return outcome(reply, await w.room_account_data(w.victim, room, "m.tag"))


@case("delete-room-tag-of-victim")
async def _(w: World) -> Outcome:
    room, _ = await w.shared_room()
    tags = f"{V3}/user/{u(w.victim.user_id)}/rooms/{quote(room)}/tags"
    await w.must(w.victim.token, "PUT", f"{tags}/u.work", {"order": 0.1})
    reply = await w.attack("DELETE", f"{tags}/u.work")
    return outcome(reply, await w.room_account_data(w.victim, room, "m.tag"))


@case("filter-for-victim")
async def _(w: World) -> Outcome:
    reply = await w.attack(
        "POST", f"{V3}/user/{u(w.victim.user_id)}/filter", body={"room": {"timeline": {"limit": 1}}}
    )
    return read_outcome(reply, lambda b: sorted(b))


@case("read-filter-of-victim")
async def _(w: World) -> Outcome:
    created = await w.must(
        w.victim.token,
        "POST",
        f"{V3}/user/{u(w.victim.user_id)}/filter",
        {"room": {"rooms": ["!secret:bridge.test"]}},
    )
    reply = await w.attack("GET", f"{V3}/user/{u(w.victim.user_id)}/filter/{created['filter_id']}")
    return read_outcome(reply, lambda b: b)


@case("openid-token-of-victim")
async def _(w: World) -> Outcome:
    reply = await w.attack("POST", f"{V3}/user/{u(w.victim.user_id)}/openid/request_token", body={})
    return read_outcome(reply, lambda b: sorted(b))


@case("presence-of-victim")
async def _(w: World) -> Outcome:
    reply = await w.attack(
        "PUT", f"{V3}/presence/{u(w.victim.user_id)}/status", body={"presence": "offline"}
    )
    return outcome(reply)


@case("typing-as-victim")
async def _(w: World) -> Outcome:
    room, _ = await w.shared_room()
    reply = await w.attack(
        "PUT",
        f"{r(room)}/typing/{u(w.victim.user_id)}",
        body={"typing": True, "timeout": 5000},
    )
    return outcome(reply)


@case("push-rule-is-the-attackers-own")
async def _(w: World) -> Outcome:
    rule = f"org.example.diff{secrets.token_hex(3)}"
    reply = await w.attack(
        "PUT",
        f"{V3}/pushrules/global/override/{rule}",
        body={"actions": ["dont_notify"], "conditions": []},
        query={"user_id": w.victim.user_id},
    )
    victims = await w.call(w.victim.token, "GET", f"{V3}/pushrules/global/override/{rule}")
    return outcome(reply, {"victim has it": victims.ok})


# ---- reads of a private room of the victim's that the attacker is not in


async def _read_victim_room(
    w: World, path: Callable[[str, str], str], observe: Callable[[Any], Any] = lambda b: b
) -> Outcome:
    room, event = await w.victim_room()
    reply = await w.attack("GET", path(room, event))
    return read_outcome(reply, observe)


def _roles(w: World, ids: Any) -> list[Any]:
    return sorted(str(w.role(i)) for i in ids)


@case("joined-members-of-private-room")
async def _(w: World) -> Outcome:
    return await _read_victim_room(
        w, lambda room, _: f"{r(room)}/joined_members", lambda b: _roles(w, b["joined"])
    )


@case("joined-members-of-private-room-via-r0-prefix")
async def _(w: World) -> Outcome:
    return await _read_victim_room(
        w,
        lambda room, _: f"/_matrix/client/r0/rooms/{quote(room)}/joined_members",
        lambda b: _roles(w, b["joined"]),
    )


@case("joined-members-of-private-room-via-api-v1-prefix")
async def _(w: World) -> Outcome:
    return await _read_victim_room(
        w,
        lambda room, _: f"/_matrix/client/api/v1/rooms/{quote(room)}/joined_members",
        lambda b: _roles(w, b["joined"]),
    )


@case("joined-members-of-room-attacker-left")
async def _(w: World) -> Outcome:
    room, _ = await w.shared_room()
    await w.must((await w.attacker_setup()).token, "POST", f"{r(room)}/leave", {})
    reply = await w.attack("GET", f"{r(room)}/joined_members")
    return read_outcome(reply, lambda b: _roles(w, b["joined"]))


@case("joined-members-of-public-room-not-joined")
async def _(w: World) -> Outcome:
    room = await w.create_room(w.victim, preset="public_chat")
    reply = await w.attack("GET", f"{r(room)}/joined_members")
    return read_outcome(reply, lambda b: _roles(w, b["joined"]))


async def _world_readable_room(w: World) -> str:
    room = await w.create_room(w.victim, preset="public_chat")
    await w.must(
        w.victim.token,
        "PUT",
        f"{r(room)}/state/m.room.history_visibility/",
        {"history_visibility": "world_readable"},
    )
    return room


# A control: anyone may read the members of a world-readable room they never left.
@case("joined-members-of-world-readable-room-never-joined")
async def _(w: World) -> Outcome:
    room = await _world_readable_room(w)
    reply = await w.attack("GET", f"{r(room)}/joined_members")
    return read_outcome(reply, lambda b: _roles(w, b["joined"]))


@case("joined-members-of-world-readable-room-attacker-left")
async def _(w: World) -> Outcome:
    room = await _world_readable_room(w)
    attacker = await w.attacker_setup()
    await w.join(attacker, room)
    await w.must(attacker.token, "POST", f"{r(room)}/leave", {})
    reply = await w.attack("GET", f"{r(room)}/joined_members")
    return read_outcome(reply, lambda b: _roles(w, b["joined"]))


@case("members-of-private-room")
async def _(w: World) -> Outcome:
    return await _read_victim_room(
        w,
        lambda room, _: f"{r(room)}/members",
        lambda b: _roles(w, (e["state_key"] for e in b["chunk"])),
    )


@case("state-of-private-room")
async def _(w: World) -> Outcome:
    return await _read_victim_room(
        w, lambda room, _: f"{r(room)}/state", lambda b: sorted(e["type"] for e in b)
    )


@case("state-event-of-private-room")
async def _(w: World) -> Outcome:
    return await _read_victim_room(w, lambda room, _: f"{r(room)}/state/m.room.name/")


@case("member-event-of-private-room")
async def _(w: World) -> Outcome:
    return await _read_victim_room(
        w,
        lambda room, _: f"{r(room)}/state/m.room.member/{u(w.victim.user_id)}",
    )


@case("messages-of-private-room")
async def _(w: World) -> Outcome:
    return await _read_victim_room(
        w,
        lambda room, _: f"{r(room)}/messages?dir=b&limit=10",
        lambda b: [e["content"].get("body") for e in b["chunk"] if e["type"] == "m.room.message"],
    )


@case("context-of-private-room-event")
async def _(w: World) -> Outcome:
    return await _read_victim_room(
        w,
        lambda room, event: f"{r(room)}/context/{quote(event)}",
        lambda b: b["event"]["content"],
    )


@case("event-of-private-room")
async def _(w: World) -> Outcome:
    return await _read_victim_room(
        w, lambda room, event: f"{r(room)}/event/{quote(event)}", lambda b: b["content"]
    )


@case("relations-of-private-room-event")
async def _(w: World) -> Outcome:
    return await _read_victim_room(
        w,
        lambda room, event: f"{V1}/rooms/{quote(room)}/relations/{quote(event)}",
        lambda b: len(b["chunk"]),
    )


@case("threads-of-private-room")
async def _(w: World) -> Outcome:
    return await _read_victim_room(
        w, lambda room, _: f"{V1}/rooms/{quote(room)}/threads", lambda b: len(b["chunk"])
    )


@case("timestamp-to-event-in-private-room")
async def _(w: World) -> Outcome:
    now = int(time.time() * 1000)
    return await _read_victim_room(
        w,
        lambda room, _: f"{V1}/rooms/{quote(room)}/timestamp_to_event?ts={now}&dir=b",
        lambda b: sorted(b),
    )


# A control: ``ts`` is an ordinary parameter here, the attacker is in the room.
@case("timestamp-to-event-in-own-room")
async def _(w: World) -> Outcome:
    room = await w.attacker_room()
    now = int(time.time() * 1000) + 60_000
    reply = await w.attack("GET", f"{V1}/rooms/{quote(room)}/timestamp_to_event?ts={now}&dir=b")
    return read_outcome(reply, lambda b: sorted(b))


@case("initial-sync-of-private-room")
async def _(w: World) -> Outcome:
    return await _read_victim_room(
        w,
        lambda room, _: f"{r(room)}/initialSync",
        lambda b: [
            e["content"].get("body")
            for e in b.get("messages", {}).get("chunk", [])
            if e["type"] == "m.room.message"
        ],
    )


@case("aliases-of-private-room")
async def _(w: World) -> Outcome:
    room, _ = await w.victim_room()
    alias = new_alias("secret")
    await w.must(w.victim.token, "PUT", alias_path(alias), {"room_id": room})
    reply = await w.attack("GET", f"{r(room)}/aliases")
    return read_outcome(reply, lambda b: len(b["aliases"]))


@case("hierarchy-of-private-room")
async def _(w: World) -> Outcome:
    return await _read_victim_room(
        w,
        lambda room, _: f"{V1}/rooms/{quote(room)}/hierarchy",
        lambda b: [room.get("name") for room in b["rooms"]],
    )


@case("summary-of-private-room")
async def _(w: World) -> Outcome:
    return await _read_victim_room(
        w,
        lambda room, _: f"{V1}/room_summary/{quote(room)}",
        lambda b: (b.get("name"), b.get("membership")),
    )


@case("summary-of-private-room-unstable-msc3266")
async def _(w: World) -> Outcome:
    return await _read_victim_room(
        w,
        lambda room, _: f"/_matrix/client/unstable/im.nheko.summary/summary/{quote(room)}",
        lambda b: (b.get("name"), b.get("membership")),
    )


@case("search-private-room")
async def _(w: World) -> Outcome:
    room, _ = await w.victim_room()
    reply = await w.attack(
        "POST",
        f"{V3}/search",
        body={
            "search_categories": {
                "room_events": {"search_term": "secret", "filter": {"rooms": [room]}}
            }
        },
    )
    return read_outcome(
        reply,
        lambda b: [
            hit["result"]["content"].get("body")
            for hit in b["search_categories"]["room_events"]["results"]
        ],
    )


@case("typing-in-private-room")
async def _(w: World) -> Outcome:
    room, _ = await w.victim_room()
    reply = await w.attack(
        "PUT", f"{r(room)}/typing/{u(w.attacker_id)}", body={"typing": True, "timeout": 5000}
    )
    return outcome(reply)


@case("receipt-in-private-room")
async def _(w: World) -> Outcome:
    room, event = await w.victim_room()
    reply = await w.attack("POST", f"{r(room)}/receipt/m.read/{quote(event)}", body={})
    return outcome(reply)


@case("read-markers-in-private-room")
async def _(w: World) -> Outcome:
    room, event = await w.victim_room()
    reply = await w.attack(
        "POST", f"{r(room)}/read_markers", body={"m.fully_read": event, "m.read": event}
    )
    return outcome(reply)


@case("send-to-private-room")
async def _(w: World) -> Outcome:
    room, _ = await w.victim_room()
    reply = await w.attack(
        "PUT",
        f"{r(room)}/send/m.room.message/{secrets.token_hex(6)}",
        body={"msgtype": "m.text", "body": "gatecrash"},
    )
    return outcome(reply, await w.messages(room))


# ---- devices


# With a display name: Synapse answers a bodiless rename of an unknown device 200
# (nothing to update), which would hide whether the device was created.
@case("create-device-by-put")
async def _(w: World) -> Outcome:
    new = "NEW" + secrets.token_hex(3).upper()
    reply = await w.attack("PUT", f"{V3}/devices/{new}", body={"display_name": "mine now"})
    return outcome(reply, [d.replace(new, "NEW") for d in await w.devices(w.attacker_id)])


@case("create-device-by-put-via-r0-prefix")
async def _(w: World) -> Outcome:
    new = "NEW" + secrets.token_hex(3).upper()
    reply = await w.attack(
        "PUT", f"/_matrix/client/r0/devices/{new}", body={"display_name": "mine now"}
    )
    return outcome(reply, [d.replace(new, "NEW") for d in await w.devices(w.attacker_id)])


@case("create-device-by-put-via-unstable-prefix")
async def _(w: World) -> Outcome:
    new = "NEW" + secrets.token_hex(3).upper()
    reply = await w.attack(
        "PUT", f"/_matrix/client/unstable/devices/{new}", body={"display_name": "mine now"}
    )
    return outcome(reply, [d.replace(new, "NEW") for d in await w.devices(w.attacker_id)])


@case("create-device-with-encoded-slash-id-by-put")
async def _(w: World) -> Outcome:
    reply = await w.attack("PUT", f"{V3}/devices/NEW%2F", body={"display_name": "mine now"})
    return outcome(reply, await w.devices(w.attacker_id))


@case("create-device-named-like-victims-by-put")
async def _(w: World) -> Outcome:
    reply = await w.attack(
        "PUT", f"{V3}/devices/{w.victim.device_id}", body={"display_name": "mine now"}
    )
    return outcome(
        reply,
        {
            "attacker": await w.devices(w.attacker_id),
            "victim": await w.device_names(w.victim.user_id),
        },
    )


@case("create-device-with-empty-id-by-put")
async def _(w: World) -> Outcome:
    reply = await w.attack("PUT", f"{V3}/devices/", body={"display_name": "nameless"})
    return outcome(reply, await w.devices(w.attacker_id))


@case("rename-own-device")
async def _(w: World) -> Outcome:
    reply = await w.attack(
        "PUT", f"{V3}/devices/{ATTACKER_DEVICE}", body={"display_name": "renamed"}
    )
    return outcome(reply, (await w.device_names(w.attacker_id)).get(ATTACKER_DEVICE))


@case("read-victim-device")
async def _(w: World) -> Outcome:
    reply = await w.attack("GET", f"{V3}/devices/{w.victim.device_id}")
    return read_outcome(reply, lambda b: b.get("device_id"))


@case("delete-own-other-device")
async def _(w: World) -> Outcome:
    await w.attacker_setup()
    reply = await w.attack("DELETE", f"{V3}/devices/{SETUP_DEVICE}", body={})
    return outcome(reply, await w.devices(w.attacker_id))


@case("delete-victim-device")
async def _(w: World) -> Outcome:
    reply = await w.attack("DELETE", f"{V3}/devices/{w.victim.device_id}", body={})
    return outcome(reply, await w.devices(w.victim.user_id))


@case("delete-device-with-empty-id")
async def _(w: World) -> Outcome:
    await w.attacker_setup()
    reply = await w.attack("DELETE", f"{V3}/devices/", body={})
    return outcome(reply, await w.devices(w.attacker_id))


@case("delete-device-with-empty-id-via-r0-prefix")
async def _(w: World) -> Outcome:
    await w.attacker_setup()
    reply = await w.attack("DELETE", "/_matrix/client/r0/devices/", body={})
    return outcome(reply, await w.devices(w.attacker_id))


@case("delete-device-with-encoded-slash-id")
async def _(w: World) -> Outcome:
    await w.attacker_setup()
    reply = await w.attack("DELETE", f"{V3}/devices/%2F", body={})
    return outcome(reply, await w.devices(w.attacker_id))


@case("delete-devices-bulk")
async def _(w: World) -> Outcome:
    await w.attacker_setup()
    reply = await w.attack("POST", f"{V3}/delete_devices", body={"devices": [SETUP_DEVICE]})
    return outcome(reply, await w.devices(w.attacker_id))


# ---- re-authentication


@case("password-change-without-reauth")
async def _(w: World) -> Outcome:
    await w.attacker_setup()
    reply = await w.attack(
        "POST", f"{V3}/account/password", body={"new_password": "pwned", "logout_devices": True}
    )
    return outcome(reply, await w.devices(w.attacker_id))


@case("deactivate-without-reauth")
async def _(w: World) -> Outcome:
    reply = await w.attack("POST", f"{V3}/account/deactivate", body={"erase": False})
    return outcome(reply, await w.is_deactivated(w.attacker_id))


@case("3pid-add-without-reauth")
async def _(w: World) -> Outcome:
    reply = await w.attack(
        "POST", f"{V3}/account/3pid/add", body={"client_secret": "secret", "sid": "sid"}
    )
    return outcome(reply)


# Closed doors: the authentication service owns third-party identifiers.
@case("3pid-delete", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    reply = await w.attack(
        "POST",
        f"{V3}/account/3pid/delete",
        body={"medium": "email", "address": "victim@example.org"},
    )
    return outcome(reply)


@case("3pid-unbind", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    reply = await w.attack(
        "POST",
        f"{V3}/account/3pid/unbind",
        body={"medium": "email", "address": "victim@example.org"},
    )
    return outcome(reply)


async def _cross_signing_reset(w: World, path: str) -> Outcome:
    attacker = await w.attacker_setup()
    original = master_key_for(w.attacker_id)
    await w.must(
        attacker.token, "POST", f"{V3}/keys/device_signing/upload", {"master_key": original}
    )
    reply = await w.attack("POST", path, body={"master_key": master_key_for(w.attacker_id)})
    current = await w.master_key(w.attacker_id)
    return outcome(reply, "original" if current == original["keys"] else current)


@case("cross-signing-reset-without-reauth")
async def _(w: World) -> Outcome:
    return await _cross_signing_reset(w, f"{V3}/keys/device_signing/upload")


@case("cross-signing-reset-without-reauth-unstable-prefix")
async def _(w: World) -> Outcome:
    return await _cross_signing_reset(w, "/_matrix/client/unstable/keys/device_signing/upload")


@case("cross-signing-first-setup")
async def _(w: World) -> Outcome:
    key = master_key_for(w.attacker_id)
    reply = await w.attack("POST", f"{V3}/keys/device_signing/upload", body={"master_key": key})
    return outcome(reply, await w.master_key(w.attacker_id) == key["keys"])


@case("login-token-without-reauth")
async def _(w: World) -> Outcome:
    reply = await w.attack("POST", f"{V1}/login/get_token", body={})
    return outcome(reply)


# ---- appservice-only endpoints


@case("appservice-ping-as-bridge")
async def _(w: World) -> Outcome:
    reply = await w.attack("POST", f"{V1}/appservice/{quote(w.bridge_appservice_id)}/ping", body={})
    return outcome(reply)


@case("appservice-ping-as-other-appservice")
async def _(w: World) -> Outcome:
    reply = await w.attack("POST", f"{V1}/appservice/{PLAIN_LOGIN_APPSERVICE_ID}/ping", body={})
    return outcome(reply)


@case("appservice-ping-unstable-msc2659")
async def _(w: World) -> Outcome:
    reply = await w.attack(
        "POST",
        f"/_matrix/client/unstable/fi.mau.msc2659/appservice/{quote(w.bridge_appservice_id)}/ping",
        body={},
    )
    return outcome(reply)


async def _appservice_room_list(w: World, method: str) -> Outcome:
    room = await w.attacker_room()
    reply = await w.attack(
        method,
        f"{V3}/directory/list/appservice/irc/{quote(room)}",
        body={"visibility": "public"},
    )
    return outcome(reply)


@case("appservice-room-list-publish")
async def _(w: World) -> Outcome:
    return await _appservice_room_list(w, "PUT")


@case("appservice-room-list-remove")
async def _(w: World) -> Outcome:
    return await _appservice_room_list(w, "DELETE")


@case("appservice-login-as-victim")
async def _(w: World) -> Outcome:
    reply = await w.attack(
        "POST",
        f"{V3}/login",
        body={
            "type": "m.login.application_service",
            "identifier": {"type": "m.id.user", "user": w.victim.localpart},
            "device_id": "STOLEN",
        },
    )
    return outcome(reply, await w.devices(w.victim.user_id))


@case("appservice-register")
async def _(w: World) -> Outcome:
    name = new_localpart("puppet")
    reply = await w.attack(
        "POST",
        f"{V3}/register",
        body={"type": "m.login.application_service", "username": name, "inhibit_login": True},
    )
    return outcome(reply, await w.user_exists(f"@{name}:{SERVER_NAME}"))


@case("guest-register")
async def _(w: World) -> Outcome:
    reply = await w.attack("POST", f"{V3}/register", body={}, query={"kind": "guest"})
    return outcome(reply)


# ---- aliases and the room directory


@case("alias-for-room-attacker-is-in")
async def _(w: World) -> Outcome:
    room, _ = await w.shared_room()
    alias = new_alias("mine")
    reply = await w.attack("PUT", alias_path(alias), body={"room_id": room})
    return outcome(reply, await w.alias_target(alias) == room)


@case("alias-for-room-attacker-is-not-in")
async def _(w: World) -> Outcome:
    room, _ = await w.victim_room()
    alias = new_alias("hijack")
    reply = await w.attack("PUT", alias_path(alias), body={"room_id": room})
    return outcome(reply, await w.alias_target(alias) == room)


@case("alias-for-room-attacker-is-not-in-via-api-v1-prefix")
async def _(w: World) -> Outcome:
    room, _ = await w.victim_room()
    alias = new_alias("hijack")
    path = f"/_matrix/client/api/v1/directory/room/{quote(alias, safe='')}"
    reply = await w.attack("PUT", path, body={"room_id": room})
    return outcome(reply, await w.alias_target(alias) == room)


@case("delete-alias-victim-created-via-r0-prefix")
async def _(w: World) -> Outcome:
    room, _ = await w.shared_room()
    alias = new_alias("victims")
    await w.must(w.victim.token, "PUT", alias_path(alias), {"room_id": room})
    reply = await w.attack("DELETE", f"/_matrix/client/r0/directory/room/{quote(alias, safe='')}")
    return outcome(reply, await w.alias_target(alias) == room)


@case("delete-alias-victim-created")
async def _(w: World) -> Outcome:
    room, _ = await w.shared_room()
    alias = new_alias("victims")
    await w.must(w.victim.token, "PUT", alias_path(alias), {"room_id": room})
    reply = await w.attack("DELETE", alias_path(alias))
    return outcome(reply, await w.alias_target(alias) == room)


@case("delete-alias-of-room-attacker-is-not-in")
async def _(w: World) -> Outcome:
    room, _ = await w.victim_room()
    alias = new_alias("victims")
    await w.must(w.victim.token, "PUT", alias_path(alias), {"room_id": room})
    reply = await w.attack("DELETE", alias_path(alias))
    return outcome(reply, await w.alias_target(alias) == room)


# Stricter through the bridge under masquerade: Synapse lets an alias's creator delete
# it, but the creator is not readable from outside the homeserver, so the bridge
# only applies the power-level rule (docs/appservice-privileges.md AS-24).
@case("delete-alias-attacker-created", bridge_may_refuse=True)
async def _(w: World) -> Outcome:
    room, _ = await w.shared_room()
    alias = new_alias("attackers")
    await w.must((await w.attacker_setup()).token, "PUT", alias_path(alias), {"room_id": room})
    reply = await w.attack("DELETE", alias_path(alias))
    return outcome(reply, await w.alias_target(alias) == room)


@case("create-room-with-alias")
async def _(w: World) -> Outcome:
    name = new_localpart("fresh")
    reply = await w.attack("POST", f"{V3}/createRoom", body={"room_alias_name": name})
    target = await w.alias_target(f"#{name}:{SERVER_NAME}")
    return outcome(reply, target is not None and target == (reply.body or {}).get("room_id"))


@case("canonical-alias-pointing-elsewhere")
async def _(w: World) -> Outcome:
    victims, _ = await w.victim_room()
    alias = new_alias("victims")
    await w.must(w.victim.token, "PUT", alias_path(alias), {"room_id": victims})
    room = await w.attacker_room()
    reply = await w.attack("PUT", f"{r(room)}/state/m.room.canonical_alias/", body={"alias": alias})
    return outcome(reply, await w.state_content(room, "m.room.canonical_alias"))


@case("publish-room-without-power")
async def _(w: World) -> Outcome:
    room, _ = await w.shared_room()
    reply = await w.attack(
        "PUT", f"{V3}/directory/list/room/{quote(room)}", body={"visibility": "public"}
    )
    listed = await w.admin("GET", f"{V3}/directory/list/room/{quote(room)}")
    return outcome(reply, listed.body.get("visibility"))


@case("publish-own-room")
async def _(w: World) -> Outcome:
    room = await w.attacker_room()
    reply = await w.attack(
        "PUT", f"{V3}/directory/list/room/{quote(room)}", body={"visibility": "public"}
    )
    listed = await w.admin("GET", f"{V3}/directory/list/room/{quote(room)}")
    return outcome(reply, listed.body.get("visibility"))


# ---- the homeserver admin API


@case("admin-read-user")
async def _(w: World) -> Outcome:
    reply = await w.attack("GET", f"{ADMIN}/v2/users/{u(w.victim.user_id)}")
    return read_outcome(reply, lambda b: b.get("name") is not None)


@case("admin-make-self-admin")
async def _(w: World) -> Outcome:
    reply = await w.attack("PUT", f"{ADMIN}/v2/users/{u(w.attacker_id)}", body={"admin": True})
    return outcome(reply, await w.is_admin(w.attacker_id))


@case("admin-reset-victim-password")
async def _(w: World) -> Outcome:
    reply = await w.attack(
        "POST",
        f"{ADMIN}/v1/reset_password/{u(w.victim.user_id)}",
        body={"new_password": "pwned", "logout_devices": True},
    )
    return outcome(reply, await w.devices(w.victim.user_id))


@case("admin-login-as-victim")
async def _(w: World) -> Outcome:
    reply = await w.attack("POST", f"{ADMIN}/v1/users/{u(w.victim.user_id)}/login", body={})
    return outcome(reply)


@case("admin-list-rooms")
async def _(w: World) -> Outcome:
    reply = await w.attack("GET", f"{ADMIN}/v1/rooms")
    return read_outcome(reply, lambda b: "rooms" in b)


@case("admin-delete-victim-room")
async def _(w: World) -> Outcome:
    room, _ = await w.victim_room()
    reply = await w.attack("DELETE", f"{ADMIN}/v2/rooms/{quote(room)}", body={})
    return outcome(reply, await w.memberships(room))


# --------------------------------------------------------------------------- the test


@pytest.fixture(params=STRATEGIES)
def strategy(request: pytest.FixtureRequest) -> Strategy:
    strategy: Strategy = request.param
    return strategy


@pytest.fixture
def bridge_appservice(request: pytest.FixtureRequest, strategy: Strategy) -> AppserviceConfig:
    """The appservice of the bridge under test: each strategy has its own registration on
    the session's Synapse (masquerade's has MSC4190, device_login's does not)."""
    name = "appservice" if strategy == "masquerade" else "device_login_appservice"
    appservice: AppserviceConfig = request.getfixturevalue(name)
    return appservice


@pytest.fixture
async def strategy_bridge(
    aiohttp_client: Callable[[web.Application], Awaitable[BridgeClient]],
    issuer: TestIssuer,
    synapse: SynapseServer,
    bridge_appservice: AppserviceConfig,
    strategy: Strategy,
    tmp_path: Path,
) -> BridgeClient:
    """The bridge, acting on Synapse with the identity strategy under test (configured
    as the ``stack`` fixture configures it)."""
    config = bridge_config(
        issuer=issuer,
        homeserver_url=synapse.base_url,
        appservice=bridge_appservice,
        strategy=strategy,
        store_path=tmp_path / "bridge.db" if strategy == "device_login" else None,
    )
    return await aiohttp_client(create_app(config))


@pytest.fixture
def appservice_id(bridge_appservice: AppserviceConfig) -> str:
    """The bridge's own appservice ID (for the appservice-only endpoints)."""
    return bridge_appservice.id


def _dump(text: str) -> None:
    with Path(DUMP).open("a", encoding="utf-8") as out:
        out.write(text + "\n\n")


def agree(case: Case, via_bridge: Outcome, direct: Outcome) -> bool:
    if via_bridge == direct:
        return True
    return case.bridge_may_refuse and via_bridge.kind == "refused" and direct.kind == "ok"


def explain(case: Case, via_bridge: Outcome, direct: Outcome, worlds: list[World]) -> str:
    verdict = "agree" if agree(case, via_bridge, direct) else "DISAGREE"
    rows = [
        f"{case.id}: the bridge and Synapse {verdict}"
        + (" (the bridge may refuse, never succeed differently)" if case.bridge_may_refuse else ""),
        f"  through the bridge: {via_bridge.kind:<8} {via_bridge.detail}",
        f"      observed:       {via_bridge.observed!r}",
        f"  directly:           {direct.kind:<8} {direct.detail}",
        f"      observed:       {direct.observed!r}",
    ]
    for world in worlds:
        rows.append(f"  {world.side} requests:")
        rows.extend(f"    {line}" for line in world.log)
    return "\n".join(rows)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_bridge_grants_no_more_than_a_plain_token(
    case: Case,
    strategy_bridge: BridgeClient,
    synapse: SynapseServer,
    http: aiohttp.ClientSession,
    login: Login,
    plain_login: PlainLogin,
    appservice_id: str,
) -> None:
    async def through_bridge(
        method: str, path: str, headers: Mapping[str, str], data: bytes | None
    ) -> Reply:
        resp = await strategy_bridge.request(
            method, URL(path, encoded=True), headers=dict(headers), data=data
        )
        return await _reply(resp)

    async def directly(
        method: str, path: str, headers: Mapping[str, str], data: bytes | None
    ) -> Reply:
        url = URL(synapse.base_url + path, encoded=True)
        async with http.request(method, url, headers=dict(headers), data=data) as resp:
            return await _reply(resp)

    async def world(side: Side) -> World:
        attacker, victim = new_localpart("attacker"), new_localpart("victim")
        victim_token = plain_login(victim, VICTIM_DEVICE)
        if side == "bridge":
            token, victim_plain = await asyncio.gather(
                login(attacker, ATTACKER_DEVICE), victim_token
            )
            # The bridge creates the user and device on first sight, as for any client.
            whoami = await through_bridge("GET", f"{V3}/account/whoami", auth(token), None)
            assert whoami.ok, whoami.summary()
        else:
            token, victim_plain = await asyncio.gather(
                plain_login(attacker, ATTACKER_DEVICE), victim_token
            )
        return World(
            side,
            synapse=synapse,
            http=http,
            plain_login=plain_login,
            send=through_bridge if side == "bridge" else directly,
            attacker_token=token,
            attacker_localpart=attacker,
            victim=Person(victim, VICTIM_DEVICE, victim_plain),
            bridge_appservice_id=appservice_id,
        )

    bridge_world, direct_world = await asyncio.gather(world("bridge"), world("direct"))
    via_bridge, direct = await asyncio.gather(case.run(bridge_world), case.run(direct_world))
    if DUMP:
        _dump(explain(case, via_bridge, direct, [bridge_world, direct_world]))
    assert agree(case, via_bridge, direct), explain(
        case, via_bridge, direct, [bridge_world, direct_world]
    )


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 70
    assert len({c.id for c in CASES}) == len(CASES)
