"""The forwarder against a fake homeserver: identity, query/header hygiene, streaming, faults."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient, AiohttpServer
from yarl import URL

from tests.fakes import (
    AS_TOKEN,
    SERVER_NAME,
    Answer,
    BridgeClient,
    FakeHomeserver,
    FakeIssuer,
    Fault,
    RecordedRequest,
    active_claims,
    bridge_config,
    free_port,
    json_answer,
    start_bridge,
)

ALICE = "alice-token-device-a"
ALICE_B = "alice-token-device-b"
BOB = "bob-token"
ALICE_ID = f"@alice:{SERVER_NAME}"
WHOAMI = "/_matrix/client/v3/account/whoami"
SYNC = "/_matrix/client/v3/sync"
MB = 1024 * 1024

MakeBridge = Callable[..., Awaitable[BridgeClient]]


def bearer(token: str = ALICE) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def raw(path: str) -> URL:
    """A path sent exactly as written (the client must not re-quote it)."""
    return URL(path, encoded=True)


@pytest.fixture
async def issuer(aiohttp_server: AiohttpServer) -> FakeIssuer:
    issuer = await FakeIssuer.start(aiohttp_server)
    issuer.tokens[ALICE] = active_claims("alice", "DEVA")
    issuer.tokens[ALICE_B] = active_claims("alice", "DEVB")
    issuer.tokens[BOB] = active_claims("bob", "BOBDEV")
    return issuer


@pytest.fixture
def make_bridge(
    aiohttp_client: AiohttpClient, issuer: FakeIssuer, homeserver: FakeHomeserver
) -> MakeBridge:
    async def make(
        overrides: Mapping[str, Any] | None = None,
        *,
        homeserver_url: str | None = None,
        **client_kwargs: Any,
    ) -> BridgeClient:
        config = bridge_config(issuer.url, homeserver_url or homeserver.url, overrides or {})
        # A bridge that hangs fails the test in seconds, not at the suite's timeout.
        client_kwargs.setdefault("timeout", aiohttp.ClientTimeout(total=10))
        return await start_bridge(aiohttp_client, config, **client_kwargs)

    return make


@pytest.fixture
async def bridge(make_bridge: MakeBridge) -> BridgeClient:
    return await make_bridge()


def only_client_request(homeserver: FakeHomeserver) -> RecordedRequest:
    (request,) = homeserver.client_requests
    return request


# ---------------------------------------------------------------------------------------
# Identity and query hygiene


async def test_homeserver_sees_the_appservice_and_the_identity_exactly_once(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    path = (
        "/_matrix/client/v3/rooms/%21abc%3Aexample.test/messages"
        f"?user_id=%40bob%3A{SERVER_NAME}&device_id=X&org.matrix.msc3202.device_id=Y&ts=1"
        f"&access_token={ALICE}&dir=b&types=m.room.message&types=m.reaction"
        "&filter=%7B%22q%22%3A%22a%2Bb%26c%3Dd%20e%22%7D"
    )
    resp = await bridge.get(raw(path), headers=bearer(ALICE))
    assert resp.status == 200

    request = only_client_request(homeserver)
    assert request.headers.getall("Authorization") == [f"Bearer {AS_TOKEN}"]
    assert request.query.getall("user_id") == [ALICE_ID]
    assert request.query.getall("device_id") == ["DEVA"]
    for stripped in ("org.matrix.msc3202.device_id", "ts", "access_token"):
        assert stripped not in request.query
    assert request.query.getall("dir") == ["b"]
    assert request.query.getall("types") == ["m.room.message", "m.reaction"]
    assert request.query.getall("filter") == ['{"q":"a+b&c=d e"}']
    assert request.raw_path == "/_matrix/client/v3/rooms/%21abc%3Aexample.test/messages"
    # The client's token reaches the homeserver nowhere.
    assert all(ALICE not in value for value in request.headers.values())
    assert all(ALICE not in value for value in request.query.values())


async def test_token_in_the_query_alone_is_accepted_and_stripped(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    resp = await bridge.get(WHOAMI, params={"access_token": ALICE})
    assert resp.status == 200
    request = only_client_request(homeserver)
    assert "access_token" not in request.query
    assert request.headers["Authorization"] == f"Bearer {AS_TOKEN}"
    assert request.query.getall("user_id") == [ALICE_ID]


@pytest.mark.parametrize(
    "path",
    [
        "/_matrix/client/v3/rooms/%21abc%3Aexample.test/state",
        "/_matrix/client/v3/rooms/!abc:example.test/state",
        "/_matrix/client/v3/profile/%40alice%3Aexample.test/displayname",
        "/_matrix/media/v3/download/example.test/abc%2Fdef",
    ],
)
async def test_raw_path_reaches_the_homeserver_as_sent(
    bridge: BridgeClient, homeserver: FakeHomeserver, path: str
) -> None:
    resp = await bridge.get(raw(path), headers=bearer())
    assert resp.status == 200
    assert only_client_request(homeserver).raw_path == path


@pytest.mark.parametrize(
    "head",
    [
        "/_matrix/client/v3/rooms/!r:s/send/m.room.message/",
        "/_matrix/client/r0/rooms/%21r%3As/send/m.room.message/",
        "/_matrix/client/v3/sendToDevice/m.room.encrypted/",
        "/_matrix/client/v3/rooms/!r:s/redact/$event:s/",
    ],
)
async def test_transaction_ids_are_per_user_and_device(
    bridge: BridgeClient, homeserver: FakeHomeserver, head: str
) -> None:
    sent = [(ALICE, "txn1"), (ALICE, "txn1"), (ALICE_B, "txn1"), (ALICE, "txn2")]
    for token, txn in sent:
        resp = await bridge.put(raw(head + txn), headers=bearer(token), json={})
        assert resp.status == 200

    paths = [r.raw_path for r in homeserver.client_requests]
    assert all(p.startswith(head) for p in paths)
    txns = [p.removeprefix(head) for p in paths]
    assert "/" not in "".join(txns)
    assert "txn1" not in txns
    assert "txn2" not in txns
    same_device, again, other_device, other_txn = txns
    assert same_device == again
    assert other_device != same_device
    assert other_txn != same_device


async def test_put_without_a_transaction_id_keeps_its_path(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    path = "/_matrix/client/v3/rooms/!r:s/state/m.room.topic/txn1"
    resp = await bridge.put(raw(path), headers=bearer(), json={"topic": "t"})
    assert resp.status == 200
    assert only_client_request(homeserver).raw_path == path


# ---------------------------------------------------------------------------------------
# Header hygiene


async def test_hop_by_hop_headers_are_not_forwarded(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    headers = {
        **bearer(),
        "Connection": "X-Custom",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Upgrade": "h2c",
        "Proxy-Authorization": "Basic cHJveHk6c2VjcmV0",
        "X-Custom": "hop-by-hop",
        "X-End-To-End": "kept",
    }
    resp = await bridge.get(SYNC, headers=headers)
    assert resp.status == 200

    request = only_client_request(homeserver)
    for name in ("Keep-Alive", "TE", "Upgrade", "Proxy-Authorization", "X-Custom"):
        assert name not in request.headers, name
    assert "x-custom" not in request.headers.get("Connection", "").lower()
    assert request.headers["X-End-To-End"] == "kept"


async def test_forwarded_headers_come_from_the_connection_not_the_client(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    headers = {
        **bearer(),
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Proto": "https",
        "X-Real-IP": "6.6.6.6",
        "Forwarded": "for=6.6.6.6",
    }
    resp = await bridge.get(SYNC, headers=headers)
    assert resp.status == 200

    request = only_client_request(homeserver)
    assert request.headers.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert request.headers.getall("X-Forwarded-Proto") == ["http"]
    assert "X-Real-IP" not in request.headers
    assert "Forwarded" not in request.headers


# ---------------------------------------------------------------------------------------
# Bodies


async def test_large_request_body_is_streamed_upstream_intact(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    payload = os.urandom(5 * MB)
    first_megabyte_upstream = asyncio.Event()
    received = bytearray()

    async def read_while_client_sends(request: web.Request) -> web.StreamResponse:
        async for chunk in request.content.iter_any():
            received.extend(chunk)
            if len(received) >= MB:
                first_megabyte_upstream.set()
        return web.json_response({"content_uri": "mxc://example.test/abc"})

    async def client_body() -> AsyncIterator[bytes]:
        yield payload[:MB]
        # A bridge that buffered the whole body would never let this event happen.
        await asyncio.wait_for(first_megabyte_upstream.wait(), timeout=2)
        for start in range(MB, len(payload), MB):
            yield payload[start : start + MB]

    homeserver.read_body = False
    homeserver.answer = read_while_client_sends
    resp = await bridge.post(
        "/_matrix/media/v3/upload",
        headers={**bearer(), "Content-Type": "application/octet-stream"},
        data=client_body(),
    )
    assert resp.status == 200
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    assert only_client_request(homeserver).headers["Content-Type"] == "application/octet-stream"


async def test_large_request_body_with_content_length_arrives_intact(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    payload = os.urandom(5 * MB)
    resp = await bridge.post("/_matrix/media/v3/upload", headers=bearer(), data=io.BytesIO(payload))
    assert resp.status == 200
    request = only_client_request(homeserver)
    assert request.headers["Content-Length"] == str(len(payload))
    assert request.body == payload


async def test_large_response_body_is_streamed_to_the_client_intact(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    payload = os.urandom(5 * MB)
    client_has_first_megabyte = asyncio.Event()

    async def stream_in_two_parts(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        await resp.write(payload[:MB])
        # A bridge that buffered the whole answer would never let this event happen.
        await asyncio.wait_for(client_has_first_megabyte.wait(), timeout=2)
        await resp.write(payload[MB:])
        await resp.write_eof()
        return resp

    homeserver.answer = stream_in_two_parts
    resp = await bridge.get("/_matrix/client/v1/media/download/example.test/big", headers=bearer())
    assert resp.status == 200
    first = await asyncio.wait_for(resp.content.readexactly(MB), timeout=2)
    client_has_first_megabyte.set()
    rest = await resp.content.read()
    assert first + rest == payload


async def test_nothing_is_added_to_the_clients_headers(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    await bridge.post(
        "/_matrix/client/v3/keys/upload",
        headers=bearer(),
        data=b"{}",
        skip_auto_headers=["Accept", "Accept-Encoding", "Content-Type", "User-Agent"],
    )
    names = {name.lower() for name in only_client_request(homeserver).headers}
    for added_by_aiohttp in ("accept", "accept-encoding", "content-type", "user-agent"):
        assert added_by_aiohttp not in names
    assert "content-length" in names


async def test_compressed_answer_passes_through_undecoded(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    compressed = gzip.compress(b'{"next_batch": "s1"}')
    homeserver.answer = raw_answer(compressed, {"Content-Encoding": "gzip"})

    resp = await bridge.get(
        SYNC, headers=bearer(), skip_auto_headers=["Accept-Encoding"], auto_decompress=False
    )
    assert resp.status == 200
    assert resp.headers["Content-Encoding"] == "gzip"
    assert await resp.read() == compressed
    # The client asked for no encoding; the bridge asks for none on its behalf.
    assert "Accept-Encoding" not in only_client_request(homeserver).headers

    # Media is passed on as the client asked for it (JSON answers under masquerade
    # are asked uncompressed: see test_transaction_tag_is_taken_out_of_answers).
    media = "/_matrix/client/v1/media/download/example.test/m"
    resp = await bridge.get(media, headers={**bearer(), "Accept-Encoding": "gzip"})
    assert await resp.json() == {"next_batch": "s1"}
    assert homeserver.client_requests[-1].headers.getall("Accept-Encoding") == ["gzip"]


def raw_answer(body: bytes, headers: Mapping[str, str], status: int = 200) -> Answer:
    async def answer(_request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=status, body=body, headers={"Content-Type": "application/json", **headers}
        )

    return answer


async def test_headers_the_homeserver_names_in_connection_are_not_passed_back(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    homeserver.answer = raw_answer(
        b"{}", {"Connection": "keep-alive, X-Hop", "X-Hop": "1", "X-Kept": "2"}
    )
    resp = await bridge.get(SYNC, headers=bearer())
    assert resp.status == 200
    assert "X-Hop" not in resp.headers
    assert resp.headers["X-Kept"] == "2"


async def test_upstream_status_headers_and_body_pass_through(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    body = b'{"errcode": "M_NOT_FOUND",  "error": "Event not found"}'
    homeserver.answer = raw_answer(body, {"X-Upstream": "synapse"}, status=404)
    resp = await bridge.get("/_matrix/client/v3/rooms/!r:s/event/$e", headers=bearer())
    assert resp.status == 404
    assert resp.headers["X-Upstream"] == "synapse"
    assert resp.content_type == "application/json"
    assert await resp.read() == body


# ---------------------------------------------------------------------------------------
# Homeserver faults


async def assert_matrix_error(resp: aiohttp.ClientResponse, status: int, errcode: str) -> None:
    assert resp.status == status
    assert resp.content_type == "application/json"
    assert (await resp.json())["errcode"] == errcode


async def test_homeserver_not_listening_is_502(make_bridge: MakeBridge) -> None:
    bridge = await make_bridge(homeserver_url=f"http://127.0.0.1:{free_port()}")
    await assert_matrix_error(await bridge.get(SYNC, headers=bearer()), 502, "M_UNKNOWN")


async def test_homeserver_gone_after_provisioning_is_502(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    assert (await bridge.get(SYNC, headers=bearer())).status == 200
    assert homeserver.server is not None
    await homeserver.server.close()
    await assert_matrix_error(await bridge.get(SYNC, headers=bearer()), 502, "M_UNKNOWN")


async def test_homeserver_slower_than_read_timeout_is_504(
    make_bridge: MakeBridge, homeserver: FakeHomeserver
) -> None:
    bridge = await make_bridge({"homeserver": {"read_timeout": 1.0}})

    async def too_slow(_request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(1.5)
        return web.json_response({})

    homeserver.answer = too_slow
    await assert_matrix_error(await bridge.get(SYNC, headers=bearer()), 504, "M_UNKNOWN")


async def cut_short_after_length(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = 1000
    await resp.prepare(request)
    await resp.write(b'{"next_ba')
    assert request.transport is not None
    request.transport.close()
    return resp


async def cut_short_chunked(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    await resp.write(b'{"next_ba')
    assert request.transport is not None
    request.transport.close()
    return resp


async def stall_mid_body(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = 1000
    await resp.prepare(request)
    await resp.write(b'{"next_ba')
    await asyncio.sleep(1.5)  # longer than read_timeout
    return resp


@pytest.mark.parametrize(
    ("broken_answer", "status"),
    [
        pytest.param(cut_short_after_length, 502, id="content-length-then-close"),
        pytest.param(cut_short_chunked, 502, id="chunked-then-close"),
        pytest.param(stall_mid_body, 504, id="stall-mid-body"),
    ],
)
async def test_broken_upstream_answer_is_an_error_for_the_client(
    make_bridge: MakeBridge, homeserver: FakeHomeserver, broken_answer: Answer, status: int
) -> None:
    bridge = await make_bridge({"homeserver": {"read_timeout": 1.0}})
    homeserver.answer = broken_answer
    resp = await bridge.get(SYNC, headers=bearer())
    # A small answer is read whole before anything is sent: its break is an error.
    await assert_matrix_error(resp, status, "M_UNKNOWN")


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
async def test_large_answer_broken_after_its_headers_is_cut_for_the_client(
    make_bridge: MakeBridge, homeserver: FakeHomeserver, length: bool
) -> None:
    bridge = await make_bridge()

    async def break_off(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if length:
            resp.content_length = 4 * MB
        await resp.prepare(request)
        await resp.write(b"x" * MB)
        assert request.transport is not None
        request.transport.close()
        return resp

    homeserver.answer = break_off
    resp = await bridge.get("/_matrix/client/v1/media/download/example.test/m", headers=bearer())
    assert resp.status == 200  # the headers were on their way before the break
    # Never a silently short body: the client must see the answer break.
    with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
        await resp.read()


async def test_homeserver_cookies_are_not_replayed_for_another_user(
    make_bridge: MakeBridge, homeserver: FakeHomeserver
) -> None:
    # A host name, not an IP literal: a real cookie jar ignores cookies of IP hosts.
    assert homeserver.server is not None
    bridge = await make_bridge(homeserver_url=f"http://localhost:{homeserver.server.port}")
    homeserver.answer = raw_answer(b"{}", {"Set-Cookie": "session=alice; Path=/"})

    resp = await bridge.get(SYNC, headers=bearer(ALICE))
    assert resp.status == 200
    assert "session=alice" in resp.headers["Set-Cookie"]
    bridge.session.cookie_jar.clear()  # the test client's own jar is not the bridge's

    resp = await bridge.get(SYNC, headers=bearer(BOB))
    assert resp.status == 200
    _alices, bobs = homeserver.client_requests
    assert "Cookie" not in bobs.headers


# ---------------------------------------------------------------------------------------
# The bridge's own answers


@pytest.mark.parametrize("path", ["/nope", "/index.html", "/_matrix/nothing"])
async def test_unknown_route_is_404_unrecognized(
    bridge: BridgeClient, homeserver: FakeHomeserver, path: str
) -> None:
    await assert_matrix_error(await bridge.get(path), 404, "M_UNRECOGNIZED")
    assert homeserver.requests == []


async def test_preflight_is_answered_without_a_token(
    bridge: BridgeClient, issuer: FakeIssuer, homeserver: FakeHomeserver
) -> None:
    resp = await bridge.options(
        SYNC,
        headers={
            "Origin": "https://app.element.io",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "GET" in resp.headers["Access-Control-Allow-Methods"]
    assert "authorization" in resp.headers["Access-Control-Allow-Headers"].lower()
    assert issuer.introspections == []
    assert homeserver.requests == []


NOT_REGISTERED = (404, "M_UNRECOGNIZED")
FORBIDDEN = (403, "M_FORBIDDEN")


@pytest.mark.parametrize(
    ("method", "path", "answer"),
    [
        # Closed doors: Synapse's answer in MAS mode (README, "Closed doors").
        ("POST", "/_matrix/client/v3/account/deactivate", NOT_REGISTERED),
        ("POST", "/_matrix/client/r0/account/password", NOT_REGISTERED),
        ("POST", "/_matrix/client/v3/account/3pid/add", NOT_REGISTERED),
        ("POST", "/_matrix/client/v3/delete_devices", NOT_REGISTERED),
        ("DELETE", "/_matrix/client/v3/devices/DEVA", NOT_REGISTERED),
        ("POST", "/_matrix/client/v3/register", FORBIDDEN),
        ("POST", "/_matrix/client/v3/account/%64eactivate/", NOT_REGISTERED),
        ("POST", "/_matrix/client/v3//account/deactivate", (400, "M_UNRECOGNIZED")),
        ("DELETE", "/_matrix/client/v3/devices/", NOT_REGISTERED),
        ("DELETE", "/_matrix/client/v3/devices", (405, "M_UNRECOGNIZED")),
        # Appservice-only endpoints.
        ("POST", "/_matrix/client/v1/appservice/matrix-oidc-bridge/ping", FORBIDDEN),
        ("POST", "/_matrix/client/v1/appservice/other-appservice/ping", FORBIDDEN),
        ("POST", "/_matrix/client/unstable/io.element.msc4512/appservice/fed_proxy", FORBIDDEN),
        ("PUT", "/_matrix/client/v3/directory/list/appservice/net/!room:example.org", FORBIDDEN),
    ],
)  # fmt: skip
async def test_closed_doors_are_refused_and_never_forwarded(
    bridge: BridgeClient,
    homeserver: FakeHomeserver,
    method: str,
    path: str,
    answer: tuple[int, str],
) -> None:
    resp = await bridge.request(method, raw(path), headers=bearer(), json={"auth": {}})
    await assert_matrix_error(resp, *answer)
    assert homeserver.requests == []


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded",
        "APPLICATION/X-WWW-FORM-URLENCODED; charset=utf-8",
        " Application/X-Www-Form-Urlencoded ;",
        "multipart/form-data; boundary=x",
        "Multipart/Form-Data",
        # RFC 2047 encoded words, which Twisted's e-mail parser decodes.
        "=?utf-8?q?application/x-www-form-urlencoded?=",
        "=?utf-8?b?YXBwbGljYXRpb24veC13d3ctZm9ybS11cmxlbmNvZGVk?=",
        "=?iso-8859-1?q?multipart/form-data?=; boundary=x",
        "application/x-www-form-urlencoded\t;",
    ],
)
@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_form_typed_bodies_never_reach_the_homeserver(
    bridge: BridgeClient, homeserver: FakeHomeserver, content_type: str, method: str
) -> None:
    """Security finding 1: Twisted merges such bodies into the query arguments."""
    body = json.dumps({"body": "x&user_id=@victim:example.org;ts=1&"})
    resp = await bridge.request(
        method,
        "/_matrix/client/v3/rooms/!r:example.org/send/m.room.message/t1",
        data=body,
        headers={**bearer(), "Content-Type": content_type},
    )
    await assert_matrix_error(resp, 400, "M_INVALID_PARAM")
    assert homeserver.client_requests == []


async def test_two_content_types_are_refused(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    """Twisted reads the first of several; aiohttp's parser refuses them all."""
    resp = await bridge.post(
        "/_matrix/media/v3/upload",
        data=b"user_id=@victim:example.org",
        headers=[
            ("Authorization", f"Bearer {ALICE}"),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Content-Type", "image/png"),
        ],
    )
    assert resp.status == 400
    assert homeserver.client_requests == []


@pytest.mark.parametrize("version", ["r0", "v3"])
async def test_appservice_login_is_refused(
    bridge: BridgeClient, homeserver: FakeHomeserver, version: str
) -> None:
    body = {"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "x"}}
    resp = await bridge.post(f"/_matrix/client/{version}/login", json=body)
    # As Synapse in MAS mode, which has no /login at all.
    await assert_matrix_error(resp, 404, "M_UNRECOGNIZED")
    assert homeserver.requests == []


async def test_password_login_is_forwarded_byte_for_byte(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    body = (
        b'{"type":  "m.login.password",\n "identifier": {"type": "m.id.user", "user": "alice"},'
        b' "password": "hunter2+:&"}'
    )
    homeserver.answer = json_answer(200, {"user_id": ALICE_ID})
    resp = await bridge.post(
        "/_matrix/client/v3/login", data=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 200
    assert await resp.json() == {"user_id": ALICE_ID}

    request = only_client_request(homeserver)
    assert request.body == body
    assert request.headers["Content-Length"] == str(len(body))
    assert "Authorization" not in request.headers
    assert "user_id" not in request.query


async def test_admin_api_is_closed_by_default(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    resp = await bridge.get("/_synapse/admin/v1/users", headers=bearer())
    await assert_matrix_error(resp, 403, "M_FORBIDDEN")
    assert homeserver.requests == []


async def test_allow_listed_admin_api_is_forwarded_as_the_user(
    make_bridge: MakeBridge, homeserver: FakeHomeserver, issuer: FakeIssuer
) -> None:
    admin = "alice-admin-token"
    claims = active_claims("alice", "DEVA")
    issuer.tokens[admin] = {**claims, "scope": f"{claims['scope']} urn:synapse:admin:*"}
    bridge = await make_bridge(
        {"homeserver": {"admin_api_allowlist": ["/_synapse/admin/v1/users"]}}
    )
    # Without the admin scope, the allow-listed admin API is closed all the same.
    resp = await bridge.get("/_synapse/admin/v1/users", headers=bearer())
    await assert_matrix_error(resp, 403, "M_FORBIDDEN")
    assert "urn:synapse:admin:*" in (await resp.json())["error"]
    assert homeserver.client_requests == []

    resp = await bridge.get("/_synapse/admin/v1/users", headers=bearer(admin))
    assert resp.status == 200
    request = only_client_request(homeserver)
    assert request.raw_path == "/_synapse/admin/v1/users"
    assert request.headers["Authorization"] == f"Bearer {AS_TOKEN}"
    assert request.query.getall("user_id") == [ALICE_ID]

    resp = await bridge.get(
        "/_synapse/admin/v1/deactivate/@bob:example.test", headers=bearer(admin)
    )
    await assert_matrix_error(resp, 403, "M_FORBIDDEN")
    assert len(homeserver.client_requests) == 1


# ---------------------------------------------------------------------------------------
# Provisioning


async def test_first_request_provisions_the_user_and_device_once(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    for _ in range(2):
        assert (await bridge.get(WHOAMI, headers=bearer())).status == 200

    kinds = [r.kind for r in homeserver.requests]
    assert kinds == ["register", "device", "client", "client"]
    register, device = homeserver.requests[:2]
    assert register.method == "POST"
    assert register.headers["Authorization"] == f"Bearer {AS_TOKEN}"
    assert json.loads(register.body) == {
        "type": "m.login.application_service",
        "username": "alice",
        "inhibit_login": True,
    }
    assert device.method == "PUT"
    assert device.raw_path == "/_matrix/client/v3/devices/DEVA"
    assert device.query.getall("user_id") == [ALICE_ID]
    assert device.headers["Authorization"] == f"Bearer {AS_TOKEN}"


async def test_concurrent_first_requests_provision_once(
    bridge: BridgeClient, issuer: FakeIssuer, homeserver: FakeHomeserver
) -> None:
    homeserver.register_delay = 0.2  # keep the window wide open
    answers = await asyncio.gather(*(bridge.get(WHOAMI, headers=bearer()) for _ in range(20)))
    assert [a.status for a in answers] == [200] * 20
    assert len(homeserver.of_kind("register")) == 1
    assert len(homeserver.of_kind("device")) == 1
    assert len(homeserver.client_requests) == 20
    assert len(issuer.introspections) == 1


# ---------------------------------------------------------------------------------------
# Found by these tests and fixed: paths Synapse still serves or caches per appservice


async def test_appservice_login_under_api_v1_is_refused(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    # Sent with any valid user token, this reaches Synapse as the appservice, which then
    # issues a native access token for any user of the namespace, admins included.
    body = {
        "type": "m.login.application_service",
        "identifier": {"type": "m.id.user", "user": "admin"},
    }
    resp = await bridge.post("/_matrix/client/api/v1/login", json=body, headers=bearer())
    assert resp.status == 404
    assert homeserver.client_requests == []


@pytest.mark.parametrize(
    "path", ["/_matrix/client/api/v1/logout", "/_matrix/client/api/v1/logout/all"]
)
async def test_logout_under_api_v1_is_refused(
    bridge: BridgeClient, homeserver: FakeHomeserver, path: str
) -> None:
    resp = await bridge.post(path, json={}, headers=bearer())
    assert resp.status == 404
    assert homeserver.client_requests == []


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/_matrix/client/api/v1/rooms/!r:s/send/m.room.message/1", id="api-v1-send"),
        pytest.param("/_matrix/client/api/v1/rooms/!r:s/redact/$e:s/1", id="api-v1-redact"),
        *(
            pytest.param(path, id=name)
            for name, path in [
                ("createRoom", "/_matrix/client/v3/createRoom/1"),
                ("join-alias", "/_matrix/client/v3/join/%23room%3As/1"),
                ("invite", "/_matrix/client/v3/rooms/!r:s/invite/1"),
                ("kick", "/_matrix/client/r0/rooms/!r:s/kick/1"),
                ("forget", "/_matrix/client/v3/rooms/!r:s/forget/1"),
                ("empty-txn", "/_matrix/client/v3/rooms/!r:s/send/m.room.message/"),
                ("empty-event-type", "/_matrix/client/v3/rooms/!r:s/send//1"),
            ]
        ),
    ],
)
async def test_homeserver_cached_puts_never_collide_across_users(
    bridge: BridgeClient, homeserver: FakeHomeserver, path: str
) -> None:
    # Synapse keys its transaction cache on (path, appservice id): two users sending the
    # same path through the bridge would get the first one's cached answer.
    for token in (ALICE, BOB):
        await bridge.put(raw(path), headers=bearer(token), json={"user_id": "@carol:s"})
    paths = [r.raw_path for r in homeserver.client_requests]
    assert len(set(paths)) == len(paths)


async def test_cross_signing_reset_requires_the_oauth_stage(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    existing_master = {"user_id": ALICE_ID, "usage": ["master"], "keys": {"ed25519:old": "old"}}

    async def keys_exist(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/keys/query"):
            return web.json_response({"master_keys": {ALICE_ID: existing_master}})
        return web.json_response({})

    homeserver.answer = keys_exist
    new_master = {"user_id": ALICE_ID, "usage": ["master"], "keys": {"ed25519:new": "new"}}
    resp = await bridge.post(
        "/_matrix/client/v3/keys/device_signing/upload",
        json={"master_key": new_master},
        headers=bearer(),
    )
    assert not [r for r in homeserver.client_requests if r.raw_path.endswith("/upload")]
    assert resp.status == 401
    flows = (await resp.json())["flows"]
    assert {"stages": ["m.oauth"]} in flows


# ---------------------------------------------------------------------------------------
# Self-healing: the homeserver lost what the bridge provisioned


def answers(*sequence: Answer) -> Answer:
    """Answer with each of ``sequence`` in turn, the last one from then on."""
    remaining = list(sequence)

    async def answer(request: web.Request) -> web.StreamResponse:
        handler = remaining.pop(0) if len(remaining) > 1 else remaining[0]
        return await handler(request)

    return answer


LOST = [
    pytest.param(json_answer(400, {"errcode": "M_UNKNOWN_DEVICE"}), id="device-gone"),
    pytest.param(
        json_answer(
            403,
            {
                "errcode": "M_FORBIDDEN",
                "error": f"Application service has not registered this user ({ALICE_ID})",
            },
        ),
        id="user-gone",
    ),
]


@pytest.mark.parametrize("lost", LOST)
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_lost_device_is_provisioned_again_and_the_request_retried_once(
    bridge: BridgeClient, homeserver: FakeHomeserver, lost: Answer, method: str
) -> None:
    assert (await bridge.get(WHOAMI, headers=bearer())).status == 200
    homeserver.answer = answers(lost, json_answer(200, {"ok": True}))
    resp = await bridge.request(
        method, "/_matrix/client/v3/rooms/!r:x/read_markers", headers=bearer(), json={"a": 1}
    )
    assert resp.status == 200
    assert await resp.json() == {"ok": True}
    retried = homeserver.client_requests[-2:]
    assert [r.method for r in retried] == [method, method]
    if method == "POST":
        assert retried[0].body == retried[1].body == b'{"a": 1}'
    # Provisioned again in between: register + device once more.
    assert len(homeserver.of_kind("register")) == 2
    assert len(homeserver.of_kind("device")) == 2


@pytest.mark.parametrize("lost", LOST)
async def test_a_token_the_issuer_no_longer_vouches_for_never_brings_a_lost_device_back(
    bridge: BridgeClient, issuer: FakeIssuer, homeserver: FakeHomeserver, lost: Answer
) -> None:
    """The authentication service ended the session through another worker or instance
    (which dropped its own cached tokens and deleted the device): this process still
    holds the token, but asks the issuer again before provisioning anything."""
    assert (await bridge.get(WHOAMI, headers=bearer())).status == 200
    del issuer.tokens[ALICE]  # revoked: the issuer now answers inactive
    homeserver.answer = answers(lost, json_answer(200, {"ok": True}))
    resp = await bridge.get(SYNC, headers=bearer())
    await assert_matrix_error(resp, 401, "M_UNKNOWN_TOKEN")
    assert len(homeserver.of_kind("register")) == 1  # provisioned once, at the start
    assert len(homeserver.of_kind("device")) == 1
    assert (await bridge.get(WHOAMI, headers=bearer())).status == 401  # and refused since


@pytest.mark.parametrize("status", [500, 429])
async def test_an_unavailable_issuer_does_not_stop_a_lost_device_being_healed(
    bridge: BridgeClient, issuer: FakeIssuer, homeserver: FakeHomeserver, status: int
) -> None:
    assert (await bridge.get(WHOAMI, headers=bearer())).status == 200
    issuer.fault = Fault.json({"error": "unavailable"}, status=status)
    homeserver.answer = answers(
        json_answer(400, {"errcode": "M_UNKNOWN_DEVICE"}), json_answer(200, {"ok": True})
    )
    resp = await bridge.get(SYNC, headers=bearer())
    assert resp.status == 200, await resp.text()
    assert len(homeserver.of_kind("device")) == 2  # healed, as before


@pytest.mark.parametrize("lost", LOST)
async def test_a_homeserver_that_keeps_losing_the_device_is_502_without_a_loop(
    bridge: BridgeClient, homeserver: FakeHomeserver, lost: Answer
) -> None:
    homeserver.answer = lost
    resp = await bridge.get(SYNC, headers=bearer())
    await assert_matrix_error(resp, 502, "M_UNKNOWN")
    assert len(homeserver.client_requests) == 2


async def test_homeserver_refusing_the_as_token_is_never_a_401_for_the_client(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    homeserver.answer = json_answer(401, {"errcode": "M_UNKNOWN_TOKEN", "error": "Unknown token"})
    resp = await bridge.get(SYNC, headers=bearer())
    assert resp.status == 502  # a 401 would log the user out for the bridge's own problem


async def test_other_errors_pass_through_unchanged(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    homeserver.answer = json_answer(
        403, {"errcode": "M_FORBIDDEN", "error": "You are not in the room"}, {"X-Extra": "1"}
    )
    resp = await bridge.get(SYNC, headers=bearer())
    assert resp.status == 403
    assert await resp.json() == {"errcode": "M_FORBIDDEN", "error": "You are not in the room"}
    assert resp.headers["X-Extra"] == "1"
    assert len(homeserver.client_requests) == 1


async def test_large_streamed_body_is_not_resent_but_the_device_is_healed(
    bridge: BridgeClient, homeserver: FakeHomeserver
) -> None:
    assert (await bridge.get(WHOAMI, headers=bearer())).status == 200
    homeserver.answer = answers(
        json_answer(400, {"errcode": "M_UNKNOWN_DEVICE"}), json_answer(200, {"ok": True})
    )
    resp = await bridge.post("/_matrix/media/v3/upload", data=os.urandom(MB), headers=bearer())
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "0"
    assert len(homeserver.client_requests) == 2  # the whoami and the upload, not resent
    assert len(homeserver.of_kind("device")) == 2
    resp = await bridge.post("/_matrix/media/v3/upload", data=os.urandom(MB), headers=bearer())
    assert resp.status == 200
