"""The forwarding core: body limits, long polls and their pool, client hang-ups,
answers sent whole or streamed, and transaction IDs given back to their device."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from bridge.auth.identity import DeviceID, Identity, UserID
from bridge.forward.forwarder import _Untag
from bridge.state import FORWARDER
from tests.fakes import BridgeClient, FakeHomeserver, json_answer
from tests.forward.test_forwarder import (
    ALICE,
    ALICE_B,
    ALICE_ID,
    BOB,
    MB,
    SYNC,
    MakeBridge,
    assert_matrix_error,
    bearer,
    raw,
)

UPLOAD = "/_matrix/media/v3/upload"
SEND = "/_matrix/client/v3/rooms/!r:example.test/send/m.room.message/"


# ---------------------------------------------------------------------------------------
# The request body limit


async def test_declared_body_over_the_limit_is_413_before_any_byte_is_forwarded(
    make_bridge: MakeBridge, homeserver: FakeHomeserver
) -> None:
    bridge = await make_bridge({"listen": {"max_request_body": "1M"}})
    resp = await bridge.post(UPLOAD, headers=bearer(), data=io.BytesIO(os.urandom(MB + 1)))
    await assert_matrix_error(resp, 413, "M_TOO_LARGE")
    assert homeserver.requests == []  # not even the user's provisioning

    resp = await bridge.post(UPLOAD, headers=bearer(), data=io.BytesIO(os.urandom(MB)))
    assert resp.status == 200
    assert len(homeserver.client_requests[-1].body) == MB


async def test_undeclared_body_over_the_limit_is_cut_off_and_413(
    make_bridge: MakeBridge, homeserver: FakeHomeserver
) -> None:
    bridge = await make_bridge({"listen": {"max_request_body": "1M"}})

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield os.urandom(MB // 2)

    resp = await bridge.post(UPLOAD, headers=bearer(), data=chunks())  # chunked
    await assert_matrix_error(resp, 413, "M_TOO_LARGE")
    # The homeserver never received a whole request body.
    assert homeserver.client_requests == []

    async def small() -> AsyncIterator[bytes]:
        yield b"x" * 1000

    resp = await bridge.post(UPLOAD, headers=bearer(), data=small())
    assert resp.status == 200
    assert homeserver.client_requests[-1].body == b"x" * 1000


# ---------------------------------------------------------------------------------------
# Long polls


async def test_long_poll_waits_for_its_timeout_plus_the_margin(
    make_bridge: MakeBridge, homeserver: FakeHomeserver
) -> None:
    bridge = await make_bridge({"homeserver": {"read_timeout": 1.0, "long_poll_margin": 1.0}})

    async def holds_for_its_timeout(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(int(request.query.get("timeout", "0")) / 1000)
        return web.json_response({"next_batch": "s2"})

    homeserver.answer = holds_for_its_timeout
    # 1.5 s: longer than read_timeout, within timeout + margin.
    resp = await bridge.get(SYNC, params={"timeout": "1500"}, headers=bearer())
    assert resp.status == 200
    assert await resp.json() == {"next_batch": "s2"}

    async def slower_than_asked(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(2.5)
        return web.json_response({})

    homeserver.answer = slower_than_asked
    resp = await bridge.get(SYNC, params={"timeout": "500"}, headers=bearer())
    await assert_matrix_error(resp, 504, "M_UNKNOWN")


async def test_held_long_polls_do_not_starve_other_requests(
    make_bridge: MakeBridge, homeserver: FakeHomeserver
) -> None:
    bridge = await make_bridge({"homeserver": {"pool_size": 2, "long_poll_pool_size": 50}})
    release = asyncio.Event()

    async def answer(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/sync"):
            await release.wait()
        return web.json_response({})

    homeserver.answer = answer
    polls = [
        asyncio.create_task(bridge.get(SYNC, params={"timeout": "30000"}, headers=bearer()))
        for _ in range(10)
    ]
    for _ in range(100):
        if len(homeserver.client_requests) == 10:
            break
        await asyncio.sleep(0.02)
    assert len(homeserver.client_requests) == 10  # all held at once, beyond pool_size

    # Meanwhile, ordinary requests get through on their own pool.
    whoami = await asyncio.wait_for(
        asyncio.gather(
            *(bridge.get("/_matrix/client/v3/account/whoami", headers=bearer()) for _ in range(5))
        ),
        timeout=5,
    )
    assert [r.status for r in whoami] == [200] * 5
    release.set()
    assert [r.status for r in await asyncio.gather(*polls)] == [200] * 10


# ---------------------------------------------------------------------------------------
# A client that hangs up


async def test_client_disconnect_cancels_the_upstream_request(
    make_bridge: MakeBridge, aiohttp_server: AiohttpServer
) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        if not request.path.endswith("/sync"):  # the user's provisioning
            return web.json_response({})
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return web.json_response({})

    upstream = web.Application()
    upstream.router.add_route("*", "/{tail:.*}", slow)
    # Test servers cancel a handler whose client went away (handler_cancellation),
    # so the fake homeserver learns of it.
    server = await aiohttp_server(upstream)
    bridge = await make_bridge(homeserver_url=str(server.make_url("")).rstrip("/"))

    request = asyncio.create_task(bridge.get(SYNC, params={"timeout": "30000"}, headers=bearer()))
    await asyncio.wait_for(started.wait(), timeout=5)
    request.cancel()  # the client closes its connection
    with pytest.raises(asyncio.CancelledError):
        await request
    await asyncio.wait_for(cancelled.wait(), timeout=5)


# ---------------------------------------------------------------------------------------
# Answers: whole or streamed


async def test_small_answer_is_sent_whole_and_a_large_one_streamed(
    bridge: BridgeClient,
    homeserver: FakeHomeserver,
) -> None:
    homeserver.answer = json_answer(document={"next_batch": "s1"})
    resp = await bridge.get(SYNC, headers=bearer())
    assert resp.headers["Content-Length"] == str(len(await resp.read()))
    assert "Transfer-Encoding" not in resp.headers

    big = os.urandom(2 * MB)

    async def large(_request: web.Request) -> web.StreamResponse:
        return web.Response(body=big, content_type="application/octet-stream")

    homeserver.answer = large
    resp = await bridge.get("/_matrix/client/v1/media/download/example.test/m", headers=bearer())
    assert resp.headers["Content-Length"] == str(2 * MB)
    assert await resp.read() == big


async def test_every_answer_has_cors_headers_and_request_id_whole_streamed_or_refused(
    bridge: BridgeClient,
    homeserver: FakeHomeserver,
) -> None:
    homeserver.answer = json_answer(document={"next_batch": "s1"})
    whole = await bridge.get(SYNC, headers=bearer())
    refused = await bridge.get(SYNC)  # no token: the bridge's own 401
    big = os.urandom(2 * MB)

    async def large(_request: web.Request) -> web.StreamResponse:
        return web.Response(body=big, content_type="application/octet-stream")

    homeserver.answer = large
    streamed = await bridge.get(
        "/_matrix/client/v1/media/download/example.test/m", headers=bearer()
    )
    assert "Content-Length" in streamed.headers  # streamed, not sent whole
    for resp in (whole, refused, streamed):
        await resp.read()
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
        assert len(resp.headers.getall("X-Request-ID")) == 1
    assert refused.status == 401


async def test_the_homeservers_own_cors_headers_are_kept(
    bridge: BridgeClient,
    homeserver: FakeHomeserver,
) -> None:
    async def own(_request: web.Request) -> web.StreamResponse:
        return web.json_response({}, headers={"Access-Control-Allow-Origin": "https://a.test"})

    homeserver.answer = own
    resp = await bridge.get(SYNC, headers=bearer())
    assert resp.headers.getall("Access-Control-Allow-Origin") == ["https://a.test"]


async def test_query_with_semicolons_cannot_smuggle_an_identity(
    bridge: BridgeClient,
    homeserver: FakeHomeserver,
) -> None:
    # Twisted splits parameters at ";" as well as "&": the bridge encodes it, so the
    # homeserver reads one parameter, never a second user_id.
    for query in ("dir=b;user_id=@bob:example.test", "user%5Fid=@bob:example.test&dir=b"):
        resp = await bridge.get(
            raw(f"/_matrix/client/v3/rooms/!r:example.test/messages?{query}"), headers=bearer()
        )
        assert resp.status == 200
        seen = homeserver.client_requests[-1]
        assert seen.query.getall("user_id") == [ALICE_ID]
        assert "user_id=@bob" not in seen.raw_path


# ---------------------------------------------------------------------------------------
# Transaction IDs given back to the sending device (masquerade)


def _tag(bridge: BridgeClient, localpart: str, device: str) -> str:
    identity = Identity(UserID(f"@{localpart}:example.test"), DeviceID(device), localpart)
    tag: str = bridge.app[FORWARDER].transaction_tag(identity)
    return tag


async def test_transaction_tag_is_taken_out_of_answers_to_its_device_only(
    bridge: BridgeClient,
    homeserver: FakeHomeserver,
) -> None:
    resp = await bridge.put(raw(SEND + "my%20txn"), headers=bearer(ALICE), json={})
    assert resp.status == 200
    sent = homeserver.client_requests[-1].raw_path.removeprefix(SEND)
    alice_tag, alice_b_tag = _tag(bridge, "alice", "DEVA"), _tag(bridge, "alice", "DEVB")
    assert sent == alice_tag + "my%20txn"  # fixed-length tag, then the client's own ID

    # The homeserver gives the decoded ID back, in /sync and the like.
    echoed = {"unsigned": {"transaction_id": alice_tag + "my txn"}}
    other = {"unsigned": {"transaction_id": alice_b_tag + "theirs"}}
    homeserver.answer = json_answer(document={"events": [echoed, other]})
    answer = await (await bridge.get(SYNC, headers=bearer(ALICE))).json()
    assert answer["events"][0]["unsigned"]["transaction_id"] == "my txn"
    # Another device's tag is left alone (the homeserver never sends it here anyway).
    assert answer["events"][1]["unsigned"]["transaction_id"] == alice_b_tag + "theirs"

    # The JSON was asked uncompressed and is compressed again for a client that accepts it.
    homeserver.answer = json_answer(document={"events": [echoed] * 100})
    resp = await bridge.get(
        SYNC, headers={**bearer(ALICE), "Accept-Encoding": "gzip"}, auto_decompress=False
    )
    assert "Accept-Encoding" not in homeserver.client_requests[-1].headers
    assert resp.headers["Content-Encoding"] == "gzip"
    answer = json.loads(gzip.decompress(await resp.read()))
    assert {e["unsigned"]["transaction_id"] for e in answer["events"]} == {"my txn"}


async def test_transaction_tag_is_taken_out_of_a_streamed_answer_across_chunks(
    bridge: BridgeClient,
    homeserver: FakeHomeserver,
) -> None:
    tag = _tag(bridge, "alice", "DEVA")
    event = json.dumps({"unsigned": {"transaction_id": tag + "t"}, "pad": "x" * 1000})
    body = ("[" + ",".join([event] * 300) + "]").encode()  # ~300 KB: streamed

    async def dribble(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        for start in range(0, len(body), 997):  # tags cut in every possible place
            await resp.write(body[start : start + 997])
        await resp.write_eof()
        return resp

    homeserver.answer = dribble
    answer = await (await bridge.get(SYNC, headers=bearer(ALICE))).json()
    assert len(answer) == 300
    assert {e["unsigned"]["transaction_id"] for e in answer} == {"t"}


@pytest.mark.parametrize("split", range(0, 45, 3))
def test_untag_finds_tags_across_any_split(split: int) -> None:
    tag = b"T" * 20
    text = b'{"a":"' + tag + b'x","b":"' + tag + b'y"}'
    untag = _Untag(tag)
    out = untag.feed(text[:split]) + untag.feed(text[split:]) + untag.rest()
    assert out == b'{"a":"x","b":"y"}'


async def test_same_transaction_id_from_two_users_gets_two_homeserver_ids(
    bridge: BridgeClient,
    homeserver: FakeHomeserver,
) -> None:
    for token in (ALICE, ALICE_B, BOB):
        assert (await bridge.put(raw(SEND + "t1"), headers=bearer(token), json={})).status == 200
    paths = {r.raw_path for r in homeserver.client_requests}
    assert len(paths) == 3
    assert all(p.endswith("t1") for p in paths)
    # (device_login passes the client's ID untouched: tests/homeserver/test_device_login.py)
