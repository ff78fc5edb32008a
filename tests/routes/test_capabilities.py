"""``GET /capabilities``: what the authentication service owns is off, the rest passes."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from aiohttp import web

from bridge.routes.capabilities import without_owned_capabilities
from tests.fakes import Answer, BridgeClient, FakeHomeserver, json_answer
from tests.routes.conftest import ALICE

AUTH = {"Authorization": f"Bearer {ALICE}"}
OFF = {"enabled": False}
SYNAPSE_ANSWER: dict[str, Any] = {
    "capabilities": {
        "m.room_versions": {"default": "10", "available": {"10": "stable"}},
        "m.change_password": {"enabled": True},
        "m.set_displayname": {"enabled": True},
        "m.3pid_changes": {"enabled": True},
        "m.get_login_token": {"enabled": True},
        "m.profile_fields": {"enabled": True},
    },
    "org.example.top_level": 1,
}


def capabilities_answer(answer: Answer) -> Answer:
    """``answer`` for ``/capabilities``; ``{}`` for what the bridge asks for itself (with
    ``issuer.kind: mas`` it looks the user's device up)."""
    other = json_answer()

    async def route(request: web.Request) -> web.StreamResponse:
        return await (answer if request.path.endswith("/capabilities") else other)(request)

    return route


def last_request_path(homeserver: FakeHomeserver) -> str:
    return homeserver.client_requests[-1].raw_path


def test_owned_capabilities_are_off_and_the_rest_is_kept() -> None:
    assert without_owned_capabilities(SYNAPSE_ANSWER) == {
        "capabilities": {
            "m.room_versions": {"default": "10", "available": {"10": "stable"}},
            "m.change_password": OFF,
            "m.set_displayname": {"enabled": True},
            "m.3pid_changes": OFF,
            "m.get_login_token": OFF,
            "m.profile_fields": {"enabled": True},
        },
        "org.example.top_level": 1,
    }
    assert SYNAPSE_ANSWER["capabilities"]["m.change_password"] == {"enabled": True}  # a copy


@pytest.mark.parametrize("capabilities", [None, "garbage", {}])
def test_missing_capabilities_are_said_off(capabilities: object) -> None:
    answer = {} if capabilities is None else {"capabilities": capabilities}
    assert without_owned_capabilities(answer)["capabilities"] == {
        "m.change_password": OFF,
        "m.3pid_changes": OFF,
        "m.get_login_token": OFF,
    }


@pytest.mark.parametrize("prefix", ["r0", "v3", "unstable"])
async def test_capabilities_through_the_bridge(
    bridge: BridgeClient, homeserver: FakeHomeserver, prefix: str
) -> None:
    homeserver.answer = capabilities_answer(
        json_answer(200, SYNAPSE_ANSWER, {"Cache-Control": "no-cache"})
    )
    resp = await bridge.get(f"/_matrix/client/{prefix}/capabilities", headers=AUTH)
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-cache"
    assert await resp.json() == without_owned_capabilities(SYNAPSE_ANSWER)
    assert last_request_path(homeserver) == f"/_matrix/client/{prefix}/capabilities"


async def test_capabilities_are_asked_for_uncompressed(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    homeserver.answer = capabilities_answer(json_answer(200, SYNAPSE_ANSWER))
    resp = await bridge.get(
        "/_matrix/client/v3/capabilities", headers={**AUTH, "Accept-Encoding": "gzip"}
    )
    assert (await resp.json())["capabilities"]["m.change_password"] == OFF
    request = homeserver.client_requests[-1]
    assert request.raw_path == "/_matrix/client/v3/capabilities"
    assert "Accept-Encoding" not in request.headers


def _raw(body: bytes, status: int = 200, **headers: str) -> Answer:
    async def answer(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers=headers)

    return capabilities_answer(answer)


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        (200, b"[1, 2]", {"Content-Type": "application/json"}),
        (200, b"<html>not json</html>", {"Content-Type": "text/html"}),
        (
            200,
            gzip.compress(json.dumps(SYNAPSE_ANSWER).encode()),
            {"Content-Type": "application/json", "Content-Encoding": "gzip"},
        ),
        (200, json.dumps({"capabilities": {"x": "y" * 70000}}).encode(), {}),
        (404, b'{"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}', {}),
        (500, json.dumps(SYNAPSE_ANSWER).encode(), {"Content-Type": "application/json"}),
    ],
    ids=["json-array", "html", "compressed-anyway", "too-large", "404", "500"],
)
async def test_other_answers_pass_through(
    bridge: BridgeClient,
    homeserver: FakeHomeserver,
    status: int,
    body: bytes,
    headers: dict[str, str],
) -> None:
    homeserver.answer = _raw(body, status, **headers)
    resp = await bridge.get("/_matrix/client/v3/capabilities", headers=AUTH, auto_decompress=False)
    assert resp.status == status
    assert await resp.read() == body
    for name, value in headers.items():
        assert resp.headers[name] == value


async def test_only_get_capabilities_is_rewritten(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    homeserver.answer = json_answer(200, SYNAPSE_ANSWER)  # for every path
    for path in ("/_matrix/client/v3/capabilitiesx", "/_matrix/client/v3/rooms/capabilities"):
        resp = await bridge.get(path, headers=AUTH)
        assert await resp.json() == SYNAPSE_ANSWER
