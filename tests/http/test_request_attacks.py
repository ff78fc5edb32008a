"""Path and header attacks against the bridge, each sent byte for byte on a raw socket.

Every case is one named test: the request is either refused (status, Matrix
errcode, and the recording fake homeserver got nothing at all), or forwarded
with the routing path and the forwarded path the same (the homeserver got
exactly the raw path the bridge routed, so no closed door and no admin path
was reached some other way). Requests go out on raw sockets because client
libraries rewrite what these attacks are made of (dot segments, fragments,
absolute-form targets, duplicate headers).

The rules are in ``bridge/http/paths.py`` (paths) and ``bridge/http/headers.py``
(headers); aiohttp's HTTP parser refuses CR/LF in header values and
``Transfer-Encoding`` with ``Content-Length`` before the bridge sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpClient, AiohttpServer
from yarl import URL

from bridge.http.paths import routing_path
from tests.fakes import (
    AS_TOKEN,
    SERVER_NAME,
    BridgeClient,
    FakeHomeserver,
    FakeIssuer,
    active_claims,
    bridge_config,
    start_bridge,
)

ALICE = "alice-token-attacks"
V3 = "/_matrix/client/v3"
ROOM = "%21room%3Aexample.test"
DECODED = "!room:example.test"
SPOOF = "6.6.6.6"
SPOOF_USER = f"@admin:{SERVER_NAME}"

MakeBridge = Callable[..., Awaitable[BridgeClient]]


@pytest.fixture
async def issuer(aiohttp_server: AiohttpServer) -> FakeIssuer:
    issuer = await FakeIssuer.start(aiohttp_server)
    issuer.tokens[ALICE] = active_claims("alice", "DEVA")
    return issuer


@pytest.fixture
def make_bridge(
    aiohttp_client: AiohttpClient, issuer: FakeIssuer, homeserver: FakeHomeserver
) -> MakeBridge:
    async def make(overrides: Mapping[str, Any] | None = None) -> BridgeClient:
        config = bridge_config(issuer.url, homeserver.url, overrides or {})
        return await start_bridge(aiohttp_client, config)

    return make


@pytest.fixture
async def bridge(make_bridge: MakeBridge) -> BridgeClient:
    return await make_bridge()


# ---------------------------------------------------------------------------------------
# Raw HTTP/1.1


@dataclass
class RawAnswer:
    status_line: str
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def errcode(self) -> str:
        assert self.headers.get("Content-Type", "").startswith("application/json"), self
        document = json.loads(self.body)
        assert isinstance(document, dict)
        return str(document["errcode"])


def request_bytes(
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
    *,
    token: str | None = ALICE,
) -> bytes:
    """One request exactly as written (``target`` and header lines are not touched)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: matrix.example.test"]
    if not any(name.lower() == "connection" for name, _ in headers or []):
        lines.append("Connection: close")
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines += [f"{name}: {value}" for name, value in headers or []]
    if body is None and method in ("POST", "PUT"):
        body = b"{}"
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return "\r\n".join([*lines, "", ""]).encode("latin-1") + (body or b"")


async def send_raw(bridge: BridgeClient, data: bytes) -> RawAnswer:
    """Write ``data`` to the bridge on a new connection; read the answer to the end."""
    assert bridge.server.port is not None
    reader, writer = await asyncio.open_connection(bridge.server.host, bridge.server.port)
    try:
        writer.write(data)
        await writer.drain()
        received = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in header_lines:
        name, _, value = line.partition(":")
        headers.add(name.strip(), value.strip())
    if headers.get("Transfer-Encoding", "").lower() == "chunked":
        body = _dechunked(body)
    return RawAnswer(status_line, int(status_line.split(" ")[1]), headers, body)


def _dechunked(data: bytes) -> bytes:
    body = bytearray()
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(body)
        body += data[:size]
        data = data[size + 2 :]


# ---------------------------------------------------------------------------------------
# Paths


@dataclass(frozen=True)
class Refused:
    """Answered by the bridge with Matrix JSON; nothing reaches the homeserver."""

    status: int
    errcode: str


@dataclass(frozen=True)
class Forwarded:
    """Reaches the homeserver with exactly this raw path (and these query parameters)."""

    raw_path: str
    query: Mapping[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ParserRefused:
    """Refused by aiohttp's HTTP parser (400, not Matrix JSON): the bridge never saw it."""


STRUCTURE = Refused(400, "M_UNRECOGNIZED")
CHARACTER = Refused(400, "M_INVALID_PARAM")
NOT_FOUND = Refused(404, "M_UNRECOGNIZED")
ADMIN_USER = f"/_synapse/admin/v2/users/@alice:{SERVER_NAME}"

PATH_CASES = [
    # Repeated slashes, which some servers fold.
    pytest.param("GET", f"/{V3}/account/whoami", STRUCTURE, id="double-slash-prefix"),
    pytest.param("POST", f"{V3}//account//deactivate/", STRUCTURE, id="double-slash-inside"),
    pytest.param("GET", f"{V3}/account/whoami//", STRUCTURE, id="double-slash-trailing"),
    # Dot segments: literal, encoded in any case, half encoded, double encoded.
    pytest.param("GET", f"{V3}/../../..{ADMIN_USER}", STRUCTURE, id="dot-dot-literal"),
    pytest.param("GET", f"{V3}/%2e%2e/%2e%2e/%2e%2e{ADMIN_USER}", STRUCTURE, id="dot-dot-encoded"),
    pytest.param("GET", f"{V3}/%2E%2E/%2e%2E/%2E%2e{ADMIN_USER}", STRUCTURE,
                 id="dot-dot-encoded-mixed-case"),
    pytest.param("GET", f"{V3}/.%2e/%2e./..{ADMIN_USER}", STRUCTURE, id="dot-dot-half-encoded"),
    pytest.param("GET", f"{V3}/%252e%252e/%252e%252e/%252e%252e{ADMIN_USER}", STRUCTURE,
                 id="dot-dot-double-encoded"),
    pytest.param("GET", f"{V3}/%252E%252e/%252E%252E/%252e%252E{ADMIN_USER}", STRUCTURE,
                 id="dot-dot-double-encoded-mixed-case"),
    pytest.param("POST", "/_matrix/client/r0/../v3/account/deactivate", STRUCTURE,
                 id="dot-dot-after-version"),
    pytest.param("POST", "/_matrix/client/r0/%2e%2e/v3/account/deactivate", STRUCTURE,
                 id="dot-dot-encoded-after-version"),
    pytest.param("GET", f"{V3}/..", STRUCTURE, id="dot-dot-last"),
    pytest.param("POST", f"{V3}/./account/deactivate", STRUCTURE, id="dot-literal"),
    pytest.param("POST", f"{V3}/%2e/account/deactivate", STRUCTURE, id="dot-encoded"),
    # Encoded slashes are data inside a segment, but never a way to climb out.
    pytest.param("GET", f"/_matrix/media/v3/download%2F..%2F..%2F..{ADMIN_USER}", STRUCTURE,
                 id="encoded-slash-dot-dot"),
    pytest.param("GET", f"/_matrix/media/v3/download%252F..%252F..%252F..{ADMIN_USER}",
                 STRUCTURE, id="encoded-slash-dot-dot-double-encoded"),
    pytest.param("POST", "/_matrix/client/v3%2Faccount%2Fdeactivate", NOT_FOUND,
                 id="encoded-slash-in-version-prefix"),
    pytest.param("POST", "/_matrix%2Fclient%2Fv3/account/deactivate", NOT_FOUND,
                 id="encoded-slash-in-api-prefix"),
    # Backslashes, a separator to some servers.
    pytest.param("GET", f"{V3}/sync%5C..%5C..%5C..%5C_synapse%5Cadmin%5Cv1%5Cusers", CHARACTER,
                 id="encoded-backslash"),
    pytest.param("GET", f"{V3}/sync%5c..%5c..%5c..%5c_synapse%5cadmin%5cv1%5cusers", CHARACTER,
                 id="encoded-backslash-lower-case"),
    pytest.param("GET", f"{V3}/sync\\..\\..\\..\\_synapse\\admin\\v1\\users", CHARACTER,
                 id="raw-backslash"),
    pytest.param("GET", f"{V3}/sync%255C..%255C_synapse", CHARACTER,
                 id="encoded-backslash-double-encoded"),
    # NUL, which C code takes for the end of the path.
    pytest.param("POST", f"{V3}/account/deactivate%00", CHARACTER, id="encoded-nul"),
    pytest.param("POST", f"{V3}/account/deactivate%2500", CHARACTER,
                 id="encoded-nul-double-encoded"),
    pytest.param("POST", f"{V3}/account/deactivate\x00", ParserRefused(), id="raw-nul"),
    # Path parameters, which some servers strip.
    pytest.param("POST", f"{V3}/account;x=1/deactivate", STRUCTURE, id="path-parameter"),
    pytest.param("GET", f"{V3}/..;/..;/..;{ADMIN_USER}", STRUCTURE, id="path-parameter-dot-dot"),
    # A raw fragment, which aiohttp drops and others may not.
    pytest.param("GET", f"{V3}/account/whoami#/../../..{ADMIN_USER}", STRUCTURE, id="raw-fragment"),
    # Not origin-form.
    pytest.param("GET", f"http://matrix.example.test{ADMIN_USER}", STRUCTURE, id="absolute-form"),
    pytest.param("POST", f"http://127.0.0.1{V3}/account/whoami", STRUCTURE,
                 id="absolute-form-client-api"),
    pytest.param("CONNECT", "127.0.0.1:443", STRUCTURE, id="authority-form"),
    # Invalid percent-encoding and UTF-8.
    pytest.param("GET", f"{V3}/rooms/%zz/state", CHARACTER, id="invalid-percent-encoding"),
    pytest.param("GET", f"{V3}/rooms/%2", CHARACTER, id="truncated-percent-encoding"),
    pytest.param("GET", f"{V3}/rooms/%ff/state", CHARACTER, id="invalid-utf8"),
    pytest.param("GET", f"{V3}/%c0%ae%c0%ae/%c0%ae%c0%ae/%c0%ae%c0%ae{ADMIN_USER}", CHARACTER,
                 id="overlong-utf8-dot-dot"),
    # Case: routes are case-sensitive, as the homeserver's.
    pytest.param("GET", "/_MATRIX/client/v3/account/whoami", NOT_FOUND, id="upper-case-matrix"),
    pytest.param("GET", "/_matrix/CLIENT/v3/account/whoami", NOT_FOUND, id="upper-case-client"),
    pytest.param("POST", "/_matrix/client/V3/account/deactivate", NOT_FOUND,
                 id="upper-case-version"),
    pytest.param("GET", "/_SYNAPSE/admin/v1/users", NOT_FOUND, id="upper-case-synapse-admin"),
    # Decoded for routing: the closed door is closed whatever the spelling.
    pytest.param("POST", f"{V3}/account/%64eactivate", NOT_FOUND, id="encoded-letter-closed-door"),
    pytest.param("POST", f"{V3}/account/%64%65%61ctivate", NOT_FOUND,
                 id="encoded-letters-closed-door"),
    pytest.param("POST", f"{V3}/account/deactivate/", NOT_FOUND, id="trailing-slash-closed-door"),
    # Forwarded as sent: the homeserver sees the segments the bridge routed.
    pytest.param("POST", f"{V3}/account%2Fdeactivate", Forwarded(f"{V3}/account%2Fdeactivate"),
                 id="encoded-slash-is-data"),
    pytest.param("POST", f"{V3}/account%2fdeactivate", Forwarded(f"{V3}/account%2fdeactivate"),
                 id="encoded-slash-lower-case-is-data"),
    pytest.param("POST", f"{V3}/account/deactivate%2f", Forwarded(f"{V3}/account/deactivate%2f"),
                 id="trailing-encoded-slash"),
    pytest.param("POST", f"{V3}/account/deactivate%23", Forwarded(f"{V3}/account/deactivate%23"),
                 id="encoded-hash-is-data"),
    pytest.param("GET", f"{V3}/directory/room/%23room%3Aexample.test",
                 Forwarded(f"{V3}/directory/room/%23room%3Aexample.test"), id="encoded-hash-alias"),
    pytest.param("GET", f"{V3}/rooms/{ROOM}/event/%24ab%2Fcd%2Bef",
                 Forwarded(f"{V3}/rooms/{ROOM}/event/%24ab%2Fcd%2Bef"),
                 id="encoded-slash-event-id"),
    pytest.param("GET", f"{V3}/rooms/{ROOM}/state/m.custom/100%25",
                 Forwarded(f"{V3}/rooms/{ROOM}/state/m.custom/100%25"), id="encoded-percent"),
    pytest.param("GET", "/_matrix/media/v3/download/example.test/a..b",
                 Forwarded("/_matrix/media/v3/download/example.test/a..b"),
                 id="dots-inside-a-segment"),
    pytest.param("GET", "/_matrix/media/v3/download/example.test/a%2e%2eb",
                 Forwarded("/_matrix/media/v3/download/example.test/a%2e%2eb"),
                 id="encoded-dots-inside-a-segment"),
    pytest.param("GET", f"{V3}/sync?filter=/../../..{ADMIN_USER}&since=a/./b",
                 Forwarded(f"{V3}/sync", {"filter": [f"/../../..{ADMIN_USER}"],
                                          "since": ["a/./b"]}),
                 id="dot-segments-in-the-query"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "target", "expected"), PATH_CASES)
async def test_path_attack(
    bridge: BridgeClient,
    homeserver: FakeHomeserver,
    issuer: FakeIssuer,
    method: str,
    target: str,
    expected: Refused | Forwarded | ParserRefused,
) -> None:
    answer = await send_raw(bridge, request_bytes(method, target))
    if isinstance(expected, Forwarded):
        assert answer.status == 200, answer
        (received,) = homeserver.client_requests
        assert received.method == method
        assert received.raw_path == expected.raw_path
        for name, values in expected.query.items():
            assert received.query.getall(name) == values
        return
    if isinstance(expected, ParserRefused):
        assert answer.status_line.startswith("HTTP/1."), answer
        assert answer.status == 400, answer
    else:
        assert answer.status == expected.status, answer
        assert answer.errcode() == expected.errcode
    # Refused before anything else: no token looked at, nothing provisioned or forwarded.
    assert homeserver.client_requests == []
    assert homeserver.requests == []
    assert issuer.introspections == []


# The routing path is what aiohttp routes on (``URL.path_safe``), the trailing slash dropped.
@pytest.mark.parametrize(
    ("target", "routing"),
    [
        pytest.param("/", "/", id="root"),
        pytest.param(f"{V3}/sync/", f"{V3}/sync", id="trailing-slash"),
        pytest.param(f"{V3}/account%2Fdeactivate", f"{V3}/account%2Fdeactivate", id="slash"),
        pytest.param(f"{V3}/account%2fdeactivate", f"{V3}/account%2Fdeactivate", id="slash-lower"),
        pytest.param(f"{V3}/account/%64eactivate", f"{V3}/account/deactivate", id="letter"),
        pytest.param(f"{V3}/directory/room/%23a%3Ab", f"{V3}/directory/room/#a:b", id="alias"),
        pytest.param(f"{V3}/rooms/{ROOM}/state/t/100%25", f"{V3}/rooms/{DECODED}/state/t/100%25",
                     id="percent"),
        pytest.param(f"{V3}/rooms/{ROOM}/state/t/%2525", f"{V3}/rooms/{DECODED}/state/t/%2525",
                     id="percent-twice"),
        pytest.param(f"{V3}/profile/%40%C3%A9%3Ab", f"{V3}/profile/@é:b", id="utf8"),
        pytest.param(f"{V3}/sync?filter=/../x//y", f"{V3}/sync", id="query-is-not-the-path"),
    ],
)  # fmt: skip
def test_routing_path_is_the_path_aiohttp_routes_on(target: str, routing: str) -> None:
    assert routing_path(target) == routing
    path_safe = URL(target, encoded=True).path_safe
    assert routing == (path_safe.rstrip("/") or "/")


# ---------------------------------------------------------------------------------------
# Headers


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


# The identity the homeserver must see, and nothing else of the kind.
BRIDGE_SET = {
    "authorization": [f"Bearer {AS_TOKEN}"],
    "x-forwarded-for": ["127.0.0.1"],
    "x-forwarded-proto": ["http"],
}

HEADER_CASES = [
    pytest.param([("X-Forwarded-For", SPOOF)], id="x-forwarded-for"),
    pytest.param([("X_Forwarded_For", SPOOF)], id="x-forwarded-for-underscores"),
    pytest.param([("X.Forwarded.For", SPOOF)], id="x-forwarded-for-dots"),
    pytest.param([("x_forwarded.FOR", SPOOF)], id="x-forwarded-for-mixed-spelling"),
    pytest.param([("Connection", "close, X-Forwarded-For"), ("X-Forwarded-For", SPOOF)],
                 id="connection-names-x-forwarded-for"),
    pytest.param([("Connection", "close, X-Spoof"), ("X-Spoof", SPOOF)],
                 id="connection-names-a-header"),
    pytest.param([("X-Forwarded-Proto", "https"), ("X_Forwarded_Proto", "https")],
                 id="x-forwarded-proto"),
    pytest.param([("X-Forwarded-Host", SPOOF), ("X-Forwarded-Port", "443"),
                  ("X-Forwarded-Prefix", "/_synapse/admin")], id="x-forwarded-host-port-prefix"),
    pytest.param([("Forwarded", f"for={SPOOF};proto=https")], id="forwarded"),
    pytest.param([("X-Real-IP", SPOOF), ("X_Real_IP", SPOOF)], id="x-real-ip"),
    pytest.param([("True-Client-IP", SPOOF), ("CF-Connecting-IP", SPOOF),
                  ("Fastly-Client-IP", SPOOF), ("X-Client-IP", SPOOF),
                  ("X-Cluster-Client-IP", SPOOF)], id="cdn-client-ip"),
    pytest.param([("X-Original-URL", ADMIN_USER), ("X-Rewrite-URL", ADMIN_USER),
                  ("X-Original-URI", ADMIN_USER)], id="url-rewrite"),
    pytest.param([("X-HTTP-Method-Override", "DELETE"), ("X-HTTP-Method", "DELETE"),
                  ("X-Method-Override", "DELETE")], id="method-override"),
    pytest.param([("X-Remote-User", SPOOF_USER), ("Remote_User", SPOOF_USER),
                  ("X-Forwarded-User", SPOOF_USER)], id="remote-user"),
    pytest.param([("X-Auth-Request-User", SPOOF_USER), ("X-Auth-Request-Email", SPOOF_USER)],
                 id="auth-request-user"),
]  # fmt: skip


@pytest.mark.parametrize("spoofed", HEADER_CASES)
async def test_header_attack(
    bridge: BridgeClient, homeserver: FakeHomeserver, spoofed: list[tuple[str, str]]
) -> None:
    """Forwarded, without any of the client's forwarding or identity headers."""
    headers = [("X-Kept", "end-to-end"), *spoofed]
    answer = await send_raw(bridge, request_bytes("GET", f"{V3}/sync", headers))
    assert answer.status == 200, answer

    (received,) = homeserver.client_requests
    assert received.headers.getall("X-Kept") == ["end-to-end"]
    for name, values in BRIDGE_SET.items():
        assert received.headers.getall(name) == values, name
    spoofed_names = {canonical(name) for name, _ in spoofed} - {"connection"}
    for name, value in received.headers.items():
        assert canonical(name) not in spoofed_names or canonical(name) in BRIDGE_SET, name
        for spoofed_value in (SPOOF, SPOOF_USER, "https", "/_synapse"):
            assert spoofed_value not in value, name
    assert "x-forwarded-for" not in received.headers.get("Connection", "").lower()


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(["Authorization", "Authorization"], id="duplicate-authorization"),
        pytest.param(["Authorization", "authorization"], id="duplicate-authorization-any-case"),
    ],
)
async def test_duplicate_authorization_is_refused(
    bridge: BridgeClient,
    homeserver: FakeHomeserver,
    issuer: FakeIssuer,
    authorization: list[str],
) -> None:
    headers = [(name, f"Bearer {ALICE}") for name in authorization]
    answer = await send_raw(bridge, request_bytes("GET", f"{V3}/sync", headers, token=None))
    assert answer.status == 400
    assert answer.errcode() == "M_INVALID_PARAM"
    assert homeserver.requests == []
    assert issuer.introspections == []


_SEND = f"POST {V3}/rooms/{ROOM}/send/m.room.message/t1 HTTP/1.1\r\nHost: x\r\n"
_AUTH = f"Authorization: Bearer {ALICE}\r\n"


@pytest.mark.parametrize(
    ("head", "body"),
    [
        pytest.param(f"X-A: a\rX-Forwarded-For: {SPOOF}\r\nContent-Length: 2", "{}",
                     id="cr-in-header-value"),
        pytest.param(f"X-A: a\nX-Forwarded-For: {SPOOF}\r\nContent-Length: 2", "{}",
                     id="lf-in-header-value"),
        pytest.param(f"X-A: a\r\n X-Forwarded-For: {SPOOF}\r\nContent-Length: 2", "{}",
                     id="obsolete-line-folding"),
        pytest.param("Transfer-Encoding: chunked\r\nContent-Length: 2", "0\r\n\r\n",
                     id="transfer-encoding-with-content-length"),
        pytest.param("Content-Length: 2\r\nTransfer-Encoding: chunked", "0\r\n\r\n",
                     id="content-length-with-transfer-encoding"),
        pytest.param("Content-Length: 2\r\nContent-Length: 0", "{}",
                     id="duplicate-content-length"),
        pytest.param("Transfer-Encoding: chunked, identity", "0\r\n\r\n",
                     id="transfer-encoding-not-chunked-last"),
    ],
)  # fmt: skip
async def test_request_smuggling_is_refused_by_the_parser(
    bridge: BridgeClient, homeserver: FakeHomeserver, issuer: FakeIssuer, head: str, body: str
) -> None:
    data = f"{_SEND}{_AUTH}{head}\r\n\r\n{body}"
    answer = await send_raw(bridge, data.encode("latin-1"))
    assert answer.status_line.startswith("HTTP/1."), answer
    assert answer.status == 400, answer
    assert homeserver.requests == []
    assert issuer.introspections == []


@pytest.mark.parametrize(
    ("trusted_proxies", "forwarded_for", "forwarded_proto"),
    [
        pytest.param(None, "127.0.0.1", "http", id="no-trusted-proxies"),
        pytest.param(["10.0.0.0/8", "::1"], "127.0.0.1", "http", id="peer-not-trusted"),
        pytest.param(["127.0.0.1/32"], "203.0.113.9, 127.0.0.1", "https", id="peer-trusted"),
    ],
)
async def test_forwarded_chain_is_appended_only_from_a_trusted_peer(
    make_bridge: MakeBridge,
    homeserver: FakeHomeserver,
    trusted_proxies: list[str] | None,
    forwarded_for: str,
    forwarded_proto: str,
) -> None:
    overrides = {} if trusted_proxies is None else {"listen": {"trusted_proxies": trusted_proxies}}
    bridge = await make_bridge(overrides)
    headers = [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https")]
    answer = await send_raw(bridge, request_bytes("GET", f"{V3}/sync", headers))
    assert answer.status == 200, answer

    (received,) = homeserver.client_requests
    assert received.headers.getall("X-Forwarded-For") == [forwarded_for]
    assert received.headers.getall("X-Forwarded-Proto") == [forwarded_proto]
