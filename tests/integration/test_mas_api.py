"""MAS's provisioning API through the bridge, carried out on the real Synapse, under
both strategies.

A bridge with ``issuer.kind: mas`` stands where Synapse would for MAS. Each call
is made exactly as MAS 1.22 makes it (method, path, JSON body, ``Authorization:
Bearer <matrix.secret>``, MAS's ``User-Agent``; the source of each call is
cited, from docs/mas-provisioning-api.md §0), and Synapse's state is then read
directly, as its admin, not through the bridge. MAS itself is not needed: the
test issuer (oidc-provider) answers introspection authenticated with the shared
secret, as MAS does, so real OAuth tokens can show what the provisioning did to
the sessions.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import yaml
from aiohttp import web

from bridge.app import create_app
from bridge.auth import reset_approvals
from bridge.config import AppserviceConfig, Strategy, parse_config
from tests.integration.conftest import BridgeClient, Login, auth, new_localpart
from tests.support.dendrite import DendriteServer
from tests.support.issuer import TestIssuer
from tests.support.net import free_port, wait_http
from tests.support.stack import (
    SERVER_NAME,
    bridge_config_document,
    served_bridge_document,
    store_section,
)
from tests.support.synapse import ADMIN_LOCALPART, SynapseServer

V3 = "/_matrix/client/v3"
WHOAMI = f"{V3}/account/whoami"
UPLOAD = f"{V3}/keys/device_signing/upload"
MAS_USER_AGENT = "matrix-authentication-service/1.22.0"


def mxid(localpart: str) -> str:
    return f"@{localpart}:{SERVER_NAME}"


@dataclass
class MasBridge:
    """A bridge with ``issuer.kind: mas`` in front of the session's Synapse."""

    strategy: Strategy
    bridge: BridgeClient
    secret: str

    async def call(
        self, endpoint: str, body: dict[str, Any] | None = None, **query: str
    ) -> tuple[int, Any]:
        """As MAS's ``SynapseConnection`` sends it (crates/matrix-synapse/src/modern.rs,
        ``builder``): reqwest's ``bearer_auth`` and, for POSTs, ``.json(body)``."""
        headers = {"Authorization": f"Bearer {self.secret}", "User-Agent": MAS_USER_AGENT}
        path = f"/_synapse/mas/{endpoint}"
        if body is None:
            resp = await self.bridge.get(path, params=query, headers=headers)
        else:
            resp = await self.bridge.post(path, json=body, headers=headers)
        text = await resp.text()
        return resp.status, (await resp.json()) if text else None


MakeMasBridge = Callable[..., Awaitable[MasBridge]]


@pytest.fixture
def make_mas_bridge(
    aiohttp_client: Callable[[web.Application], Awaitable[BridgeClient]],
    request: pytest.FixtureRequest,
    issuer: TestIssuer,
    synapse: SynapseServer,
    tmp_path: Path,
) -> MakeMasBridge:
    """A bridge in front of Synapse with ``strategy``, ``issuer.kind: mas``, and (unless
    ``admin`` is false) ``homeserver.admin_localpart`` set to Synapse's admin. The
    bridges one test makes share one store (as instances of one deployment)."""
    store = store_section(tmp_path / "bridge.db")

    async def make(strategy: Strategy, *, admin: bool = True) -> MasBridge:
        appservice: AppserviceConfig = request.getfixturevalue(
            "appservice" if strategy == "masquerade" else "device_login_appservice"
        )
        document = bridge_config_document(
            issuer=issuer,
            homeserver_url=synapse.base_url,
            appservice=appservice,
            strategy=strategy,
            **({"store": store} if strategy == "device_login" else {}),
        )
        document["issuer"] = {
            "issuer": issuer.url,
            "kind": "mas",
            "introspection": {
                "auth": "mas_shared_secret",
                "client_secret": issuer.mas_shared_secret,
            },
        }
        homeserver = dict(document["homeserver"])  # type: ignore[call-overload]
        if admin:
            homeserver["admin_localpart"] = ADMIN_LOCALPART
        document["homeserver"] = homeserver
        bridge = await aiohttp_client(create_app(parse_config(document)))
        return MasBridge(strategy, bridge, issuer.mas_shared_secret)

    return make


@pytest.fixture(params=["masquerade", "device_login"])
async def mas(request: pytest.FixtureRequest, make_mas_bridge: MakeMasBridge) -> MasBridge:
    return await make_mas_bridge(request.param)


SynapseAdmin = Callable[[str], Awaitable[tuple[int, Any]]]


@pytest.fixture
def synapse_get(synapse: SynapseServer, http: aiohttp.ClientSession) -> SynapseAdmin:
    """GET from Synapse directly, as its admin."""

    async def get(path: str) -> tuple[int, Any]:
        async with http.get(synapse.base_url + path, headers=auth(synapse.admin_token)) as resp:
            return resp.status, await resp.json()

    return get


async def synapse_user(synapse_get: SynapseAdmin, localpart: str) -> dict[str, Any] | None:
    status, user = await synapse_get(f"/_synapse/admin/v2/users/{quote(mxid(localpart))}")
    assert status in (200, 404), user
    return user if status == 200 else None


async def synapse_devices(synapse_get: SynapseAdmin, localpart: str) -> dict[str, str | None]:
    """Device ID → display name, as Synapse has them."""
    status, answer = await synapse_get(f"/_synapse/admin/v2/users/{quote(mxid(localpart))}/devices")
    assert status == 200, answer
    return {d["device_id"]: d.get("display_name") for d in answer["devices"]}


async def provision(mas: MasBridge, localpart: str, *devices: str) -> None:
    """A user and devices, as MAS provisions them on registration and login."""
    # modern.rs @ 10d26a89, provision_user: MAS 1.22 always sends `locked`.
    status, _ = await mas.call("provision_user", {"localpart": localpart, "locked": False})
    assert status == 201
    for device_id in devices:
        # modern.rs, upsert_device (inside the login: compat/login.rs, the OAuth code exchange).
        status, _ = await mas.call(
            "upsert_device", {"localpart": localpart, "device_id": device_id}
        )
        assert status == 201


async def whoami(mas: MasBridge, token: str) -> tuple[int, Any]:
    resp = await mas.bridge.get(WHOAMI, headers=auth(token))
    return resp.status, await resp.json()


# ------------------------------------------------------------------------------- users


async def test_users_are_provisioned_and_named(mas: MasBridge, synapse_get: SynapseAdmin) -> None:
    alice = new_localpart("alice")
    # modern.rs, is_localpart_available: GET with the localpart url-encoded.
    assert await mas.call("is_localpart_available", localpart=alice) == (200, {})
    assert await synapse_user(synapse_get, alice) is None

    # modern.rs @ 10d26a89, provision_user, as MAS 1.22 sends it on registration.
    body = {
        "localpart": alice,
        "set_displayname": "Alice",
        "set_emails": [f"{alice}@example.org"],
        "locked": False,
    }
    assert await mas.call("provision_user", body) == (201, {})
    user = await synapse_user(synapse_get, alice)
    assert user is not None
    assert (user["displayname"], user["deactivated"], user["locked"]) == ("Alice", False, False)
    assert user["threepids"] == []  # e-mail addresses cannot be carried out (README)

    # modern.rs, is_localpart_available: now taken (MAS turns this into its 409).
    status, answer = await mas.call("is_localpart_available", localpart=alice)
    assert (status, answer["errcode"]) == (400, "M_USER_IN_USE")

    # modern.rs @ 10d26a89, provision_user again (the provision job runs on every change).
    body = {"localpart": alice, "set_displayname": "Alice L.", "locked": False}
    assert await mas.call("provision_user", body) == (200, {})
    assert (await synapse_user(synapse_get, alice) or {})["displayname"] == "Alice L."

    # modern.rs, query_user: the body MAS deserializes.
    assert await mas.call("query_user", localpart=alice) == (
        200,
        {
            "user_id": mxid(alice),
            "display_name": "Alice L.",
            "avatar_url": None,
            "is_suspended": False,
            "is_deactivated": False,
        },
    )

    # modern.rs, set_displayname.
    body = {"localpart": alice, "displayname": "Alice Liddell"}
    assert await mas.call("set_displayname", body) == (200, {})
    assert (await synapse_user(synapse_get, alice) or {})["displayname"] == "Alice Liddell"

    # modern.rs, unset_displayname.
    assert await mas.call("unset_displayname", {"localpart": alice}) == (200, {})
    assert (await synapse_user(synapse_get, alice) or {})["displayname"] is None
    status, answer = await mas.call("query_user", localpart=alice)
    assert (status, answer["display_name"]) == (200, None)


async def test_a_new_user_is_named_after_its_localpart(
    mas: MasBridge, synapse_get: SynapseAdmin
) -> None:
    bob = new_localpart("bob")
    # modern.rs @ 10d26a89, provision_user without set_displayname.
    assert await mas.call("provision_user", {"localpart": bob, "locked": False}) == (201, {})
    assert (await synapse_user(synapse_get, bob) or {})["displayname"] == bob


async def test_unknown_users_are_not_found_and_not_created(
    mas: MasBridge, synapse_get: SynapseAdmin
) -> None:
    ghost = new_localpart("ghost")
    # modern.rs, query_user.
    status, answer = await mas.call("query_user", localpart=ghost)
    assert (status, answer["errcode"]) == (404, "M_NOT_FOUND")
    # modern.rs, set_displayname / upsert_device / sync_devices.
    for endpoint, body in (
        ("set_displayname", {"localpart": ghost, "displayname": "Boo"}),
        ("upsert_device", {"localpart": ghost, "device_id": "GHOSTDEVICE"}),
        ("sync_devices", {"localpart": ghost, "devices": ["GHOSTDEVICE"]}),
    ):
        status, answer = await mas.call(endpoint, body)
        assert (status, answer["errcode"]) == (404, "M_NOT_FOUND"), endpoint
    assert await synapse_user(synapse_get, ghost) is None


async def test_a_wrong_secret_does_nothing(mas: MasBridge, synapse_get: SynapseAdmin) -> None:
    carol = new_localpart("carol")
    resp = await mas.bridge.post(
        "/_synapse/mas/provision_user",
        json={"localpart": carol},
        headers={"Authorization": "Bearer not-the-secret", "User-Agent": MAS_USER_AGENT},
    )
    assert (resp.status, (await resp.json())["errcode"]) == (403, "M_FORBIDDEN")
    resp = await mas.bridge.post("/_synapse/mas/provision_user", json={"localpart": carol})
    assert (resp.status, (await resp.json())["errcode"]) == (403, "M_FORBIDDEN")
    assert await synapse_user(synapse_get, carol) is None


async def test_lock_and_unlock(mas: MasBridge, synapse_get: SynapseAdmin) -> None:
    dave = new_localpart("dave")
    await provision(mas, dave)
    # modern.rs @ 10d26a89, provision_user: locking is this call with `locked: true`.
    assert await mas.call("provision_user", {"localpart": dave, "locked": True}) == (200, {})
    assert (await synapse_user(synapse_get, dave) or {})["locked"] is True
    assert await mas.call("provision_user", {"localpart": dave, "locked": False}) == (200, {})
    assert (await synapse_user(synapse_get, dave) or {})["locked"] is False


async def test_delete_user(mas: MasBridge, synapse_get: SynapseAdmin, login: Login) -> None:
    erin = new_localpart("erin")
    await provision(mas, erin, "ERINDEVICE01")
    token = await login(erin, "ERINDEVICE01")
    assert (await whoami(mas, token))[0] == 200

    # modern.rs, delete_user: both keys always sent.
    assert await mas.call("delete_user", {"localpart": erin, "erase": True}) == (200, {})
    user = await synapse_user(synapse_get, erin)
    assert user is not None
    assert (user["deactivated"], user["erased"], user["displayname"]) == (True, True, None)
    assert await synapse_devices(synapse_get, erin) == {}
    # The issuer still says the token is active; it is refused at once all the same:
    # under masquerade by the account-state check (homeserver.admin_localpart), which
    # comes first, otherwise because its device is gone.
    status, answer = await whoami(mas, token)
    if mas.strategy == "masquerade":
        assert (status, answer["errcode"]) == (403, "M_USER_DEACTIVATED")
    else:
        assert (status, answer["errcode"]) == (401, "M_UNKNOWN_TOKEN")

    # modern.rs, query_user: found, deactivated (read with the admin API).
    status, answer = await mas.call("query_user", localpart=erin)
    assert (status, answer["is_deactivated"]) == (200, True)


async def background_update_done(synapse: SynapseServer, name: str) -> None:
    """Wait until Synapse has run a background update (its database, read-only)."""
    uri = f"file:{synapse.workdir / 'homeserver.db'}?mode=ro"
    for _ in range(600):
        with closing(sqlite3.connect(uri, uri=True)) as db:
            query = "SELECT 1 FROM background_updates WHERE update_name = ?"
            if db.execute(query, (name,)).fetchone() is None:
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"Synapse has not run the background update {name}")


async def test_reactivate_user(
    mas: MasBridge, synapse_get: SynapseAdmin, synapse: SynapseServer
) -> None:
    # Reactivation recreates the profile row with an upsert on full_user_id, which
    # fails on a fresh SQLite database until this index is built (Synapse's own
    # reactivate_user too).
    await background_update_done(synapse, "profiles_full_user_id_key_idx")
    fay = new_localpart("fay")
    await provision(mas, fay)
    # modern.rs, delete_user; then modern.rs, reactivate_user.
    assert await mas.call("delete_user", {"localpart": fay, "erase": False}) == (200, {})
    assert (await synapse_user(synapse_get, fay) or {})["deactivated"] is True
    assert await mas.call("reactivate_user", {"localpart": fay}) == (200, {})
    user = await synapse_user(synapse_get, fay)
    assert user is not None
    assert (user["deactivated"], user["displayname"]) == (False, fay)
    # An active user: nothing to do, 200.
    assert await mas.call("reactivate_user", {"localpart": fay}) == (200, {})


async def test_without_the_admin_api(
    make_mas_bridge: MakeMasBridge, synapse_get: SynapseAdmin
) -> None:
    """What is answered when the bridge has no admin to ask (README: honest defaults)."""
    mas = await make_mas_bridge("device_login", admin=False)
    frank = new_localpart("frank")
    await provision(mas, frank)
    # modern.rs @ 10d26a89, provision_user with `locked: true`: left to MAS.
    assert await mas.call("provision_user", {"localpart": frank, "locked": True}) == (200, {})
    assert (await synapse_user(synapse_get, frank) or {})["locked"] is False
    # modern.rs, delete_user.
    assert await mas.call("delete_user", {"localpart": frank, "erase": False}) == (200, {})
    assert (await synapse_user(synapse_get, frank) or {})["deactivated"] is True
    # modern.rs, query_user: found, but the client API cannot say it is deactivated.
    status, answer = await mas.call("query_user", localpart=frank)
    assert (status, answer["is_deactivated"], answer["display_name"]) == (200, False, frank)
    # modern.rs, reactivate_user: cannot be done.
    status, answer = await mas.call("reactivate_user", {"localpart": frank})
    assert (status, answer["errcode"]) == (404, "M_UNRECOGNIZED")
    assert (await synapse_user(synapse_get, frank) or {})["deactivated"] is True


# ----------------------------------------------------------------------------- devices


async def test_devices_are_upserted_renamed_synced_and_deleted(
    mas: MasBridge, synapse_get: SynapseAdmin
) -> None:
    gina = new_localpart("gina")
    await provision(mas, gina)
    device = {"localpart": gina, "device_id": "GINADEVICE01"}

    # modern.rs, upsert_device (display_name omitted when None).
    assert await mas.call("upsert_device", {**device, "display_name": "Element X"}) == (201, {})
    assert await synapse_devices(synapse_get, gina) == {"GINADEVICE01": "Element X"}
    assert await mas.call("upsert_device", device) == (200, {})
    assert await synapse_devices(synapse_get, gina) == {"GINADEVICE01": "Element X"}

    # modern.rs, update_device_display_name.
    body = {**device, "display_name": "My phone"}
    assert await mas.call("update_device_display_name", body) == (200, {})
    assert await synapse_devices(synapse_get, gina) == {"GINADEVICE01": "My phone"}
    body = {"localpart": gina, "device_id": "NOSUCHDEVICE", "display_name": "x"}
    status, answer = await mas.call("update_device_display_name", body)
    assert (status, answer["errcode"]) == (404, "M_NOT_FOUND")
    assert await synapse_devices(synapse_get, gina) == {"GINADEVICE01": "My phone"}

    # modern.rs @ 10d26a89, sync_devices: a set, in any order.
    body = {"localpart": gina, "devices": ["GINADEVICE02", "GINADEVICE01"]}
    assert await mas.call("sync_devices", body) == (200, {})
    assert set(await synapse_devices(synapse_get, gina)) == {"GINADEVICE01", "GINADEVICE02"}
    body = {"localpart": gina, "devices": ["GINADEVICE03", "GINADEVICE02"]}
    assert await mas.call("sync_devices", body) == (200, {})
    assert set(await synapse_devices(synapse_get, gina)) == {"GINADEVICE02", "GINADEVICE03"}

    # modern.rs, delete_device: 204, also for a device that does not exist.
    status, answer = await mas.call(
        "delete_device", {"localpart": gina, "device_id": "GINADEVICE02"}
    )
    assert (status, answer) == (204, None)
    assert set(await synapse_devices(synapse_get, gina)) == {"GINADEVICE03"}
    status, _ = await mas.call("delete_device", {"localpart": gina, "device_id": "GINADEVICE02"})
    assert status == 204

    # modern.rs @ 10d26a89, sync_devices with no device (after provision_user, or a lock).
    assert await mas.call("sync_devices", {"localpart": gina, "devices": []}) == (200, {})
    assert await synapse_devices(synapse_get, gina) == {}


@pytest.mark.parametrize("ending", ["delete_device", "sync_devices"])
async def test_a_token_of_a_deleted_device_is_refused_at_once(
    mas: MasBridge, synapse_get: SynapseAdmin, login: Login, ending: str
) -> None:
    hugo = new_localpart("hugo")
    await provision(mas, hugo, "HUGODEVICE01", "HUGODEVICE02")
    token = await login(hugo, "HUGODEVICE01")
    other = await login(hugo, "HUGODEVICE02")
    status, answer = await whoami(mas, token)
    assert (status, answer["device_id"]) == (200, "HUGODEVICE01")  # now cached
    assert (await whoami(mas, other))[0] == 200

    if ending == "delete_device":
        # modern.rs, delete_device.
        body: dict[str, Any] = {"localpart": hugo, "device_id": "HUGODEVICE01"}
    else:
        # modern.rs @ 10d26a89, sync_devices, as MAS runs it after a session ends.
        body = {"localpart": hugo, "devices": ["HUGODEVICE02"]}
    status, _ = await mas.call(ending, body)
    assert status in (200, 204)

    assert set(await synapse_devices(synapse_get, hugo)) == {"HUGODEVICE02"}
    # The issuer still vouches for the token; the very next request is refused anyway.
    status, answer = await whoami(mas, token)
    assert (status, answer["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    assert (await whoami(mas, other))[0] == 200
    assert set(await synapse_devices(synapse_get, hugo)) == {"HUGODEVICE02"}


@pytest.mark.parametrize("strategy", ["masquerade", "device_login"])
async def test_another_instance_refuses_the_deleted_device_too(
    make_mas_bridge: MakeMasBridge, login: Login, strategy: Strategy
) -> None:
    """Two bridge instances (one store under device_login): MAS calls one of them; the
    other still has the token in its cache, and the homeserver tells it the rest."""
    first, second = await make_mas_bridge(strategy), await make_mas_bridge(strategy)
    iris = new_localpart("iris")
    await provision(first, iris, "IRISDEVICE01")
    token = await login(iris, "IRISDEVICE01")
    assert (await whoami(second, token))[0] == 200  # cached by the second instance
    # modern.rs, delete_device, to the first instance.
    body = {"localpart": iris, "device_id": "IRISDEVICE01"}
    assert await first.call("delete_device", body) == (204, None)
    status, answer = await whoami(second, token)
    assert (status, answer["errcode"]) == (401, "M_UNKNOWN_TOKEN")


async def test_a_device_mas_never_provisioned_is_refused(
    mas: MasBridge, synapse_get: SynapseAdmin, login: Login
) -> None:
    """As Synapse in MAS mode: nothing is created on first sight."""
    ivy = new_localpart("ivy")
    await provision(mas, ivy)
    token = await login(ivy, "IVYDEVICE001")
    status, answer = await whoami(mas, token)
    assert (status, answer["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    assert await synapse_devices(synapse_get, ivy) == {}


# ----------------------------------------------------------------------- cross-signing


def master_key(user_id: str) -> dict[str, Any]:
    public = base64.b64encode(os.urandom(32)).decode().rstrip("=")
    return {"user_id": user_id, "usage": ["master"], "keys": {f"ed25519:{public}": public}}


async def current_master(synapse: SynapseServer, http: aiohttp.ClientSession, user: str) -> Any:
    """The user's master key as Synapse has it (queried as its admin)."""
    async with http.post(
        f"{synapse.base_url}{V3}/keys/query",
        json={"device_keys": {user: []}},
        headers=auth(synapse.admin_token),
    ) as resp:
        return (await resp.json()).get("master_keys", {}).get(user, {}).get("keys")


async def test_cross_signing_reset_needs_mas_approval_once(
    mas: MasBridge, login: Login, synapse: SynapseServer, http: aiohttp.ClientSession
) -> None:
    jack = new_localpart("jack")
    user = mxid(jack)
    await provision(mas, jack, "JACKDEVICE01")
    token = await login(jack, "JACKDEVICE01")

    # Approving before any master key exists does nothing (Synapse: a logged no-op).
    # modern.rs, allow_cross_signing_reset.
    assert await mas.call("allow_cross_signing_reset", {"localpart": jack}) == (200, {})
    first = master_key(user)
    resp = await mas.bridge.post(UPLOAD, json={"master_key": first}, headers=auth(token))
    assert resp.status == 200, await resp.text()

    second = master_key(user)
    resp = await mas.bridge.post(UPLOAD, json={"master_key": second}, headers=auth(token))
    assert resp.status == 401
    assert {"stages": ["m.oauth"]} in (await resp.json())["flows"]
    assert await current_master(synapse, http, user) == first["keys"]

    # modern.rs, allow_cross_signing_reset: the user approved the reset in MAS.
    assert await mas.call("allow_cross_signing_reset", {"localpart": jack}) == (200, {})
    resp = await mas.bridge.post(UPLOAD, json={"master_key": second}, headers=auth(token))
    assert resp.status == 200, await resp.text()
    assert await current_master(synapse, http, user) == second["keys"]

    # One approval, one replacement.
    third = master_key(user)
    resp = await mas.bridge.post(UPLOAD, json={"master_key": third}, headers=auth(token))
    assert resp.status == 401
    assert await current_master(synapse, http, user) == second["keys"]


async def test_cross_signing_approval_expires(
    mas: MasBridge,
    login: Login,
    synapse: SynapseServer,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reset_approvals, "RESET_WINDOW", 0.5)
    kim = new_localpart("kim")
    user = mxid(kim)
    await provision(mas, kim, "KIMDEVICE001")
    token = await login(kim, "KIMDEVICE001")
    first = master_key(user)
    resp = await mas.bridge.post(UPLOAD, json={"master_key": first}, headers=auth(token))
    assert resp.status == 200

    # modern.rs, allow_cross_signing_reset; then the window closes unused.
    assert await mas.call("allow_cross_signing_reset", {"localpart": kim}) == (200, {})
    await asyncio.sleep(0.6)
    resp = await mas.bridge.post(UPLOAD, json={"master_key": master_key(user)}, headers=auth(token))
    assert resp.status == 401
    assert await current_master(synapse, http, user) == first["keys"]


# ----------------------------------------------------------------------------- Dendrite


async def test_on_dendrite(
    aiohttp_client: Callable[[web.Application], Awaitable[BridgeClient]],
    dendrite: DendriteServer,
    device_login_appservice: AppserviceConfig,
    issuer: TestIssuer,
    http: aiohttp.ClientSession,
    login: Login,
    tmp_path: Path,
) -> None:
    """device_login on Dendrite 0.13.8: what is carried out, and what cannot be (README).

    Dendrite's state is read from Dendrite itself, with the appservice token and
    ``?user_id=`` (it has no admin API for users and devices)."""
    appservice = device_login_appservice
    document = bridge_config_document(
        issuer=issuer,
        homeserver_url=dendrite.base_url,
        appservice=appservice,
        strategy="device_login",
        store_path=tmp_path / "bridge.db",
    )
    document["issuer"] = {
        "issuer": issuer.url,
        "kind": "mas",
        "introspection": {"auth": "mas_shared_secret", "client_secret": issuer.mas_shared_secret},
    }
    bridge = await aiohttp_client(create_app(parse_config(document)))
    mas = MasBridge("device_login", bridge, issuer.mas_shared_secret)

    async def as_user(user: str, path: str) -> tuple[int, Any]:
        async with http.get(
            dendrite.base_url + path, params={"user_id": user}, headers=auth(appservice.as_token)
        ) as resp:
            return resp.status, await resp.json()

    async def devices(user: str) -> dict[str, Any]:
        status, answer = await as_user(user, f"{V3}/devices")
        assert status == 200, answer
        return {d["device_id"]: d.get("display_name") for d in answer["devices"] or []}

    lena = new_localpart("lena")
    user = mxid(lena)

    async def displayname() -> Any:
        status, profile = await as_user(user, f"{V3}/profile/{quote(user)}")
        assert status == 200, profile
        return profile.get("displayname")

    # Users: modern.rs is_localpart_available, provision_user, query_user, set_ and
    # unset_displayname, carried out as on Synapse.
    assert await mas.call("is_localpart_available", localpart=lena) == (200, {})
    body = {"localpart": lena, "set_displayname": "Lena", "locked": False}
    assert await mas.call("provision_user", body) == (201, {})
    assert await displayname() == "Lena"
    assert await mas.call("provision_user", body) == (200, {})
    status, answer = await mas.call("is_localpart_available", localpart=lena)
    assert (status, answer["errcode"]) == (400, "M_USER_IN_USE")
    status, answer = await mas.call("query_user", localpart=lena)
    assert (status, answer["display_name"], answer["is_deactivated"]) == (200, "Lena", False)
    assert await mas.call("set_displayname", {"localpart": lena, "displayname": "L."}) == (200, {})
    assert await displayname() == "L."
    assert await mas.call("unset_displayname", {"localpart": lena}) == (200, {})
    assert await displayname() is None
    status, answer = await mas.call("query_user", localpart=new_localpart("nobody"))
    assert (status, answer["errcode"]) == (404, "M_NOT_FOUND")

    # Devices: modern.rs upsert_device, update_device_display_name, sync_devices,
    # delete_device; the device's own login, token and logout.
    device = {"localpart": lena, "device_id": "LENADEVICE01"}
    assert await mas.call("upsert_device", {**device, "display_name": "Phone"}) == (201, {})
    assert await devices(user) == {"LENADEVICE01": "Phone"}
    body = {**device, "display_name": "My phone"}
    assert await mas.call("update_device_display_name", body) == (200, {})
    assert await devices(user) == {"LENADEVICE01": "My phone"}
    body = {"localpart": lena, "devices": ["LENADEVICE02", "LENADEVICE03"]}
    assert await mas.call("sync_devices", body) == (200, {})
    assert set(await devices(user)) == {"LENADEVICE02", "LENADEVICE03"}
    body = {"localpart": lena, "device_id": "LENADEVICE02"}
    assert await mas.call("delete_device", body) == (204, None)
    assert set(await devices(user)) == {"LENADEVICE03"}

    token = await login(lena, "LENADEVICE03")
    assert (await bridge.get(WHOAMI, headers=auth(token))).status == 200
    assert await mas.call("sync_devices", {"localpart": lena, "devices": []}) == (200, {})
    assert await devices(user) == {}
    resp = await bridge.get(WHOAMI, headers=auth(token))
    assert (resp.status, (await resp.json())["errcode"]) == (401, "M_UNKNOWN_TOKEN")

    # Cannot be done: Dendrite asks for user-interactive auth (a password) to
    # deactivate, even the appservice, and has no API to reactivate.
    status, answer = await mas.call("delete_user", {"localpart": lena, "erase": False})
    assert (status, answer["errcode"]) == (404, "M_UNRECOGNIZED")
    status, answer = await mas.call("reactivate_user", {"localpart": lena})
    assert (status, answer["errcode"]) == (404, "M_UNRECOGNIZED")
    assert await displayname() is None  # still there, still active


async def test_the_api_can_have_a_listener_of_its_own(
    tmp_path: Path,
    issuer: TestIssuer,
    synapse: SynapseServer,
    appservice: AppserviceConfig,
    http: aiohttp.ClientSession,
) -> None:
    """issuer.provisioning_listen: /_synapse/mas/* on that listener only (a real serve)."""
    public, internal = free_port(), free_port()
    document = served_bridge_document(
        issuer=issuer, homeserver_url=synapse.base_url, appservice=appservice, port=public
    )
    document["homeserver"]["strategy"] = "masquerade"  # type: ignore[index]
    document["issuer"] = {
        "issuer": issuer.url,
        "kind": "mas",
        "introspection": {"auth": "mas_shared_secret", "client_secret": issuer.mas_shared_secret},
        "provisioning_listen": {"host": "127.0.0.1", "port": internal},
    }
    config = tmp_path / "bridge.yaml"
    config.write_text(yaml.safe_dump(document), encoding="utf-8")
    process = _serve(config)
    try:
        wait_http(
            f"http://127.0.0.1:{public}/.well-known/matrix/client",
            is_alive=lambda: process.poll() is None,
        )
        headers = {"Authorization": f"Bearer {issuer.mas_shared_secret}"}
        path = "/_synapse/mas/is_localpart_available?localpart=" + new_localpart("free")
        async with http.get(f"http://127.0.0.1:{public}{path}", headers=headers) as resp:
            assert (resp.status, (await resp.json())["errcode"]) == (404, "M_UNRECOGNIZED")
        async with http.get(f"http://127.0.0.1:{internal}{path}", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
    finally:
        process.terminate()
        process.wait(timeout=15)


def _serve(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
