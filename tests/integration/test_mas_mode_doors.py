# ruff: noqa: E501  (one door per line reads better than wrapped rows)
"""The bridge's closed doors and capabilities against a real Synapse in MAS mode.

A second Synapse runs for this module with ``matrix_authentication_service``
enabled, in front of a fake MAS that only introspects: one token of one user,
provisioned through Synapse's own ``/_synapse/mas/*`` API as MAS does. Every
closed door is sent to that Synapse and to the bridge (in front of the
session's ordinary Synapse), each with a valid token of its own, and again
without a token; status and errcode must agree, except where the README's
"Closed doors" table says why not. ``DOORS`` is that table.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest
from yarl import URL

from tests.integration.conftest import BridgeClient, Login, auth, new_localpart
from tests.support.stack import SERVER_NAME
from tests.support.synapse import MasMode, SynapseServer, start_synapse

V3 = "/_matrix/client/v3"
AS_TYPE = "m.login.application_service"
NOT_REGISTERED = (404, "M_UNRECOGNIZED")  # no such servlet in MAS mode
WRONG_METHOD = (405, "M_UNRECOGNIZED")  # the path is routed for other methods only
FORBIDDEN = (403, "M_FORBIDDEN")
MISSING_TOKEN = (401, "M_MISSING_TOKEN")
# The device of the MAS-mode Synapse's token, and another one of the same user.
MAS_DEVICE, OTHER_DEVICE = "MASDEV", "OTHERDEV"

Answer = tuple[int, str | None]


@dataclass(frozen=True)
class Door:
    """One closed-door request and Synapse's answer to it in MAS mode.

    ``authenticated``: Synapse checks the token before it answers (so without one it is
    401; the bridge refuses before any token, as ever). ``bridge``: the bridge's answer
    where it differs on purpose. ``without_token``: both sides' answer without a token,
    where that is neither the answer with one nor Synapse's 401.
    """

    method: str
    path: str
    body: bytes | None
    synapse: Answer
    authenticated: bool = False
    bridge: Answer | None = None
    without_token: Answer | None = None

    @property
    def id(self) -> str:
        body = "" if self.body is None else f" {self.body.decode()[:60]}"
        return f"{self.method} {self.path}{body}"


def _json(document: object) -> bytes:
    return json.dumps(document).encode()


_EMPTY = b"{}"
_AS = {"type": AS_TYPE, "inhibit_login": True, "username": "x"}
DOORS = [
    Door("POST", f"{V3}/account/deactivate", _json({"erase": True}), NOT_REGISTERED),
    Door("POST", "/_matrix/client/r0/account/deactivate", _EMPTY, NOT_REGISTERED),
    Door("POST", f"{V3}/account/password", _json({"new_password": "pwned"}), NOT_REGISTERED),
    Door("POST", f"{V3}/account/password/email/requestToken", _json({"client_secret": "x", "email": "a@b.c", "send_attempt": 1}), NOT_REGISTERED),
    Door("POST", f"{V3}/account/password/msisdn/requestToken", _EMPTY, NOT_REGISTERED),
    # ThreepidRestServlet still serves GET; its POST (the deprecated add) is "Not found".
    Door("POST", f"{V3}/account/3pid", _EMPTY, NOT_REGISTERED),
    Door("PUT", f"{V3}/account/3pid", _EMPTY, WRONG_METHOD),
    Door("PATCH", f"{V3}/account/3pid", _EMPTY, WRONG_METHOD),
    Door("POST", f"{V3}/account/3pid/add", _json({"client_secret": "x", "sid": "y"}), NOT_REGISTERED),
    Door("POST", f"{V3}/account/3pid/delete", _json({"medium": "email", "address": "a@b.c"}), NOT_REGISTERED),
    Door("POST", f"{V3}/account/3pid/email/requestToken", _EMPTY, NOT_REGISTERED),
    Door("POST", f"{V3}/account/3pid/msisdn/requestToken", _EMPTY, NOT_REGISTERED),
    Door("GET", "/_matrix/client/unstable/add_threepid/email/submit_token", None, NOT_REGISTERED),
    Door("POST", "/_matrix/client/unstable/add_threepid/msisdn/submit_token", _EMPTY, NOT_REGISTERED),
    # Served by Synapse in MAS mode: bind asks the identity server (none here: 500),
    # unbind answers 200 with nothing bound. The bridge keeps both closed.
    Door("POST", f"{V3}/account/3pid/bind", _json({"client_secret": "x", "sid": "y", "id_server": "127.0.0.1", "id_access_token": "t"}), (500, "M_UNKNOWN"), authenticated=True, bridge=FORBIDDEN),
    Door("POST", f"{V3}/account/3pid/unbind", _json({"medium": "email", "address": "a@b.c"}), (200, None), authenticated=True, bridge=FORBIDDEN),
    Door("PUT", f"{V3}/account/3pid/bind", _EMPTY, WRONG_METHOD),
    Door("POST", f"{V3}/delete_devices", _json({"devices": [OTHER_DEVICE]}), NOT_REGISTERED),
    # DeviceRestServlet: 404 for anyone but an appservice, after the token.
    Door("DELETE", f"{V3}/devices/{OTHER_DEVICE}", _EMPTY, NOT_REGISTERED, authenticated=True),
    Door("DELETE", f"{V3}/devices/", _EMPTY, NOT_REGISTERED, authenticated=True),
    Door("DELETE", f"{V3}/devices", _EMPTY, WRONG_METHOD),
    Door("DELETE", f"{V3}/devices/A%2FB", _EMPTY, NOT_REGISTERED, authenticated=True),
    # RegisterAppServiceOnlyRestServlet: POST only, answers from the body.
    Door("GET", f"{V3}/register", None, WRONG_METHOD),
    Door("HEAD", f"{V3}/register", None, (405, None)),
    Door("PUT", f"{V3}/register", _EMPTY, WRONG_METHOD),
    Door("PATCH", f"{V3}/register", _EMPTY, WRONG_METHOD),
    # Preflight: answered everywhere, closed doors included.
    Door("OPTIONS", f"{V3}/register", None, (204, None)),
    Door("POST", f"{V3}/register", _json({"username": "intruder", "password": "x"}), FORBIDDEN),
    Door("POST", "/_matrix/client/r0/register", _json({"type": "m.login.dummy"}), FORBIDDEN),
    Door("POST", "/_matrix/client/unstable/register", _EMPTY, FORBIDDEN),
    Door("POST", f"{V3}/register?kind=guest", _EMPTY, FORBIDDEN),
    Door("POST", f"{V3}/register", b"not json", (400, "M_NOT_JSON")),
    Door("POST", f"{V3}/register", b"", (400, "M_NOT_JSON")),
    Door("POST", f"{V3}/register", b"[1]", (400, "M_BAD_JSON")),
    Door("POST", f"{V3}/register", _json({"type": AS_TYPE, "username": "x"}), (400, "M_APPSERVICE_LOGIN_UNSUPPORTED")),
    Door("POST", f"{V3}/register?kind=guest", _json(_AS), (403, "M_UNKNOWN")),
    Door("POST", f"{V3}/register?kind=admin", _json(_AS), (400, "M_UNRECOGNIZED")),
    Door("POST", f"{V3}/register", _json({**_AS, "username": 1}), (400, "M_UNKNOWN")),
    # Synapse looks the token up as an appservice's: 401 M_UNKNOWN_TOKEN for a user's,
    # which logs the client out; the bridge answers 403. Without a token, both 400.
    Door("POST", f"{V3}/register", _json(_AS), (401, "M_UNKNOWN_TOKEN"), bridge=FORBIDDEN, without_token=(400, "M_UNKNOWN")),
    Door("POST", "/_matrix/client/v1/register", _EMPTY, NOT_REGISTERED),
    Door("POST", f"{V3}/register/", _EMPTY, NOT_REGISTERED),
    Door("GET", f"{V3}/register/available?username=someone", None, NOT_REGISTERED),
    Door("POST", f"{V3}/register/email/requestToken", _EMPTY, NOT_REGISTERED),
    Door("POST", f"{V3}/register/msisdn/requestToken", _EMPTY, NOT_REGISTERED),
    Door("GET", "/_matrix/client/v1/register/m.login.registration_token/validity?token=x", None, NOT_REGISTERED),
    Door("GET", "/_matrix/client/unstable/registration/email/submit_token", None, NOT_REGISTERED),
    Door("POST", f"{V3}/login", _json({"type": AS_TYPE, "identifier": {"type": "m.id.user", "user": "victim"}}), NOT_REGISTERED),
    Door("POST", "/_matrix/client/api/v1/login", _json({"type": AS_TYPE, "identifier": {"type": "m.id.user", "user": "victim"}}), NOT_REGISTERED),
    Door("POST", "/_matrix/client/v1/login/get_token", _EMPTY, NOT_REGISTERED),
    Door("POST", "/_matrix/client/unstable/org.matrix.msc3882/login/token", _EMPTY, NOT_REGISTERED),
    Door("POST", f"{V3}/logout", _EMPTY, NOT_REGISTERED),
    Door("POST", f"{V3}/logout/all", _EMPTY, NOT_REGISTERED),
    Door("POST", "/_matrix/client/api/v1/logout", _EMPTY, NOT_REGISTERED),
    # An empty segment is refused before any door or token (bridge.http.paths).
    Door("POST", f"{V3}//account//deactivate/", _EMPTY, NOT_REGISTERED, bridge=(400, "M_UNRECOGNIZED")),
    Door("POST", f"{V3}/account/%64eactivate", _EMPTY, NOT_REGISTERED),
]  # fmt: skip


# ---------------------------------------------------------------------------------------
# A fake MAS and the MAS-mode Synapse


class _Introspection(BaseHTTPRequestHandler):
    """``POST /oauth2/introspect`` as MAS answers Synapse: the tokens the server knows
    are active, any other is not. Synapse sends MAS's shared secret as a bearer token."""

    server: _FakeMas

    def do_POST(self) -> None:
        form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode())
        given = self.headers.get("Authorization", "").encode()
        if self.path != "/oauth2/introspect" or not hmac.compare_digest(
            given, f"Bearer {self.server.secret}".encode()
        ):
            self.send_error(403)
            return
        token = form.get("token", [""])[0]
        body = _json(self.server.tokens.get(token, {"active": False}))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _FakeMas(ThreadingHTTPServer):
    """Serves :class:`_Introspection` on 127.0.0.1, in a thread: it lives as long as the
    module's Synapse, longer than any test's event loop."""

    def __init__(self, secret: str) -> None:
        super().__init__(("127.0.0.1", 0), _Introspection)
        self.secret = secret
        self.tokens: dict[str, dict[str, object]] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/"


@dataclass(frozen=True)
class MasSynapse:
    server: SynapseServer
    token: str  # a valid token of a user with two devices


@pytest.fixture(scope="module")
def mas_synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MasSynapse]:
    secret = secrets.token_hex(32)
    fake = _FakeMas(secret)
    thread = threading.Thread(target=fake.serve_forever, daemon=True)
    thread.start()
    workdir: Path = tmp_path_factory.mktemp("synapse-mas")
    server = start_synapse(
        workdir=workdir,
        registration_files=[],
        server_name=SERVER_NAME,
        mas=MasMode(endpoint=fake.url, secret=secret),
    )
    try:
        localpart = new_localpart("mallory")
        server.provision_as_mas(localpart, MAS_DEVICE)
        server.provision_as_mas(localpart, OTHER_DEVICE)
        token = secrets.token_urlsafe(24)
        fake.tokens[token] = {
            "active": True,
            "scope": f"urn:matrix:client:api:* urn:matrix:client:device:{MAS_DEVICE}",
            "username": localpart,
        }
        yield MasSynapse(server, token)
    finally:
        server.stop()
        fake.shutdown()
        fake.server_close()
        thread.join(timeout=10)


# ---------------------------------------------------------------------------------------
# Sending one door to each side


async def _answer(resp: aiohttp.ClientResponse) -> Answer:
    body = await resp.read()
    try:
        document = json.loads(body) if body else {}
    except ValueError:
        document = {}
    errcode = document.get("errcode") if isinstance(document, dict) else None
    return resp.status, errcode


def _request_kwargs(door: Door, token: str | None) -> dict[str, Any]:
    headers = {} if token is None else auth(token)
    if door.body is not None:
        headers["Content-Type"] = "application/json"
    return {"headers": headers, "data": door.body}


async def to_synapse(
    http: aiohttp.ClientSession, synapse: SynapseServer, door: Door, token: str | None
) -> Answer:
    url = URL(synapse.base_url + door.path, encoded=True)
    async with http.request(door.method, url, **_request_kwargs(door, token)) as resp:
        return await _answer(resp)


async def to_bridge(bridge: BridgeClient, door: Door, token: str | None) -> Answer:
    url = URL(door.path, encoded=True)
    async with bridge.request(door.method, url, **_request_kwargs(door, token)) as resp:
        return await _answer(resp)


@pytest.fixture
async def bridge_token(login: Login) -> str:
    """A valid OAuth token of a user of the bridge."""
    return await login(new_localpart("mallory"), "DEVA")


@pytest.mark.parametrize("door", DOORS, ids=[d.id for d in DOORS])
async def test_the_bridge_answers_as_synapse_in_mas_mode(
    mas_synapse: MasSynapse,
    bridge: BridgeClient,
    bridge_token: str,
    http: aiohttp.ClientSession,
    door: Door,
) -> None:
    """Each side with a valid token of its own."""
    synapse_answer = await to_synapse(http, mas_synapse.server, door, mas_synapse.token)
    assert synapse_answer == door.synapse, "Synapse in MAS mode changed; update DOORS and README"
    assert await to_bridge(bridge, door, bridge_token) == (door.bridge or door.synapse)


@pytest.mark.parametrize("door", DOORS, ids=[d.id for d in DOORS])
async def test_without_a_token(
    mas_synapse: MasSynapse, bridge: BridgeClient, http: aiohttp.ClientSession, door: Door
) -> None:
    """Synapse refuses most doors before it looks for a token; the bridge refuses all
    of them so."""
    expected = door.without_token or (MISSING_TOKEN if door.authenticated else door.synapse)
    assert await to_synapse(http, mas_synapse.server, door, None) == expected
    bridge_expected = door.without_token or door.bridge or door.synapse
    assert await to_bridge(bridge, door, None) == bridge_expected


async def test_devices_are_left_alone(mas_synapse: MasSynapse, http: aiohttp.ClientSession) -> None:
    """None of the MAS-mode refusals of this module deleted a device."""
    url = mas_synapse.server.base_url + f"{V3}/devices"
    async with http.get(url, headers=auth(mas_synapse.token)) as resp:
        devices = {d["device_id"] for d in (await resp.json())["devices"]}
    assert devices == {MAS_DEVICE, OTHER_DEVICE}


OWNED = ("m.change_password", "m.3pid_changes", "m.get_login_token")


async def test_capabilities_as_synapse_in_mas_mode(
    mas_synapse: MasSynapse,
    synapse: SynapseServer,
    bridge: BridgeClient,
    bridge_token: str,
    http: aiohttp.ClientSession,
) -> None:
    path = f"{V3}/capabilities"
    async with http.get(mas_synapse.server.base_url + path, headers=auth(mas_synapse.token)) as r:
        assert r.status == 200
        in_mas_mode = (await r.json())["capabilities"]
    async with http.get(synapse.base_url + path, headers=auth(synapse.admin_token)) as r:
        assert r.status == 200
        ordinary = (await r.json())["capabilities"]
    resp = await bridge.get(path, headers=auth(bridge_token))
    assert resp.status == 200
    through_bridge = (await resp.json())["capabilities"]

    assert ordinary["m.change_password"] == {"enabled": True}  # the bridge has work to do
    for name in OWNED:
        assert in_mas_mode[name] == {"enabled": False}
        assert through_bridge[name] == in_mas_mode[name]
    # Everything else is the homeserver's own answer.
    assert {k: v for k, v in through_bridge.items() if k not in OWNED} == {
        k: v for k, v in ordinary.items() if k not in OWNED
    }
