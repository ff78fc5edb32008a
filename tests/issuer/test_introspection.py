"""The issuer client through the bridge app: introspection faults, client auth, discovery."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import unquote_plus

import pytest
from pytest_aiohttp import AiohttpClient, AiohttpServer

from tests.fakes import (
    PUBLIC_BASEURL,
    BridgeClient,
    FakeHomeserver,
    FakeIssuer,
    Fault,
    active_claims,
    bearer,
    bridge_config,
    free_port,
    start_bridge,
)

WHOAMI = "/_matrix/client/v3/account/whoami"
TOKEN = "opaque-access-token-alice"
AUTH_METADATA = "/_matrix/client/v1/auth_metadata"
AUTH_METADATA_MSC2965 = "/_matrix/client/unstable/org.matrix.msc2965/auth_metadata"
AUTH_ISSUER = "/_matrix/client/unstable/org.matrix.msc2965/auth_issuer"
INTROSPECTION_TIMEOUT = 0.2

MakeBridge = Callable[..., Awaitable[BridgeClient]]


@pytest.fixture
async def issuer(aiohttp_server: AiohttpServer) -> FakeIssuer:
    issuer = await FakeIssuer.start(aiohttp_server)
    issuer.tokens[TOKEN] = active_claims()
    return issuer


@pytest.fixture
def make_bridge(
    aiohttp_client: AiohttpClient, issuer: FakeIssuer, homeserver: FakeHomeserver
) -> MakeBridge:
    async def make(
        overrides: Mapping[str, Any] | None = None, *, issuer_url: str | None = None
    ) -> BridgeClient:
        config = bridge_config(
            issuer_url or issuer.url,
            homeserver.url,
            {"issuer": {"introspection": {"timeout": INTROSPECTION_TIMEOUT}}},
            overrides or {},
        )
        return await start_bridge(aiohttp_client, config)

    return make


@pytest.fixture
async def bridge(make_bridge: MakeBridge) -> BridgeClient:
    return await make_bridge()


# ---------------------------------------------------------------------------------------
# Introspection outcomes

ISSUER_FAULTS = [
    pytest.param(Fault.json({"error": "server_error"}, status=500), id="500"),
    pytest.param(
        Fault(status=502, body=b"<h1>Bad Gateway</h1>", content_type="text/html"), id="502"
    ),
    pytest.param(Fault.json({"error": "invalid_client"}, status=401), id="401-bridge-creds"),
    pytest.param(Fault(body=b"\xff\xfe<html>not json", content_type="text/html"), id="garbage"),
    pytest.param(Fault.json([active_claims()]), id="json-list"),
    pytest.param(
        Fault.json({k: v for k, v in active_claims().items() if k != "active"}),
        id="active-missing",
    ),
    pytest.param(Fault.json(active_claims(), delay=INTROSPECTION_TIMEOUT * 3), id="too-slow"),
]


@pytest.mark.parametrize("fault", ISSUER_FAULTS)
async def test_issuer_failure_is_503_never_401_and_not_cached(
    bridge: BridgeClient, issuer: FakeIssuer, homeserver: FakeHomeserver, fault: Fault
) -> None:
    issuer.fault = fault
    for attempt in (1, 2):
        resp = await bridge.get(WHOAMI, headers=bearer(TOKEN))
        assert resp.status == 503
        assert (await resp.json())["errcode"] == "M_UNKNOWN"
        assert int(resp.headers["Retry-After"]) > 0
        assert len(issuer.introspections) == attempt  # asked again: the failure was not kept
    assert homeserver.requests == []

    # Nothing negative was remembered: once the issuer recovers, the token works at once.
    issuer.fault = None
    resp = await bridge.get(WHOAMI, headers=bearer(TOKEN))
    assert resp.status == 200
    assert len(issuer.introspections) == 3


async def test_inactive_token_is_401_unknown_token(
    bridge: BridgeClient, issuer: FakeIssuer, homeserver: FakeHomeserver
) -> None:
    resp = await bridge.get(WHOAMI, headers=bearer("revoked-token"))
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"
    assert len(issuer.introspections) == 1
    assert homeserver.requests == []


@pytest.mark.parametrize("error", ["unsupported_token_type", "invalid_token"])
async def test_token_the_issuer_calls_malformed_is_401_and_cached_briefly(
    bridge: BridgeClient, issuer: FakeIssuer, homeserver: FakeHomeserver, error: str
) -> None:
    # oidc-provider answers this for a JWT access token (which it does not store).
    issuer.fault = Fault.json({"error": error}, status=400)
    for _ in range(2):
        resp = await bridge.get(WHOAMI, headers=bearer("eyJhbGciOiJSUzI1NiJ9.e30.c2ln"))
        assert resp.status == 401
        assert (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"
    assert len(issuer.introspections) == 1
    assert homeserver.requests == []


async def test_other_issuer_400_is_still_the_issuers_failure(
    bridge: BridgeClient, issuer: FakeIssuer
) -> None:
    issuer.fault = Fault.json({"error": "invalid_request"}, status=400)
    resp = await bridge.get(WHOAMI, headers=bearer(TOKEN))
    assert resp.status == 503


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b"Bearer \xff\xfe\x80token", id="not-utf-8"),
        pytest.param("Bearer tök€n".encode(), id="non-ascii"),
        pytest.param(b"Bearer " + b"a" * (12 * 1024 + 1), id="too-long"),
        pytest.param(b"Bearer " + b"a" * (64 * 1024), id="64-KiB"),
    ],
)
async def test_odd_tokens_are_401_without_asking_anyone(
    bridge: BridgeClient,
    issuer: FakeIssuer,
    homeserver: FakeHomeserver,
    header: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Security finding 6: never a 500 with a traceback, never an issuer call."""
    reader, writer = await asyncio.open_connection(bridge.host, bridge.port)
    writer.write(b"GET " + WHOAMI.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n")
    writer.write(b"Authorization: " + header + b"\r\n\r\n")
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), head
    assert json.loads(body)["errcode"] == "M_UNKNOWN_TOKEN"
    assert issuer.introspections == []
    assert homeserver.requests == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("%FF%FEtoken", id="not-utf-8"),
        pytest.param("a" * (12 * 1024 + 1), id="too-long"),
        pytest.param("a" * (64 * 1024), id="64-KiB"),
    ],
)
async def test_odd_token_in_the_query_is_401(
    bridge: BridgeClient, issuer: FakeIssuer, homeserver: FakeHomeserver, token: str
) -> None:
    """A Matrix error, not the HTTP parser's bare 400 (the request line is read up to
    MAX_HEADER_FIELD too)."""
    resp = await bridge.get(WHOAMI + "?access_token=" + token)
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"
    assert issuer.introspections == []
    assert homeserver.requests == []


async def test_introspection_answer_from_another_issuer_is_401(
    bridge: BridgeClient, issuer: FakeIssuer, homeserver: FakeHomeserver
) -> None:
    issuer.tokens["foreign"] = {**active_claims(), "iss": "https://evil.example/"}
    resp = await bridge.get(WHOAMI, headers=bearer("foreign"))
    assert resp.status == 401
    assert homeserver.requests == []


async def test_audience_and_client_allow_lists_apply_to_introspection(
    make_bridge: MakeBridge, issuer: FakeIssuer, homeserver: FakeHomeserver
) -> None:
    bridge = await make_bridge({"issuer": {"audiences": ["bridge"], "client_ids": ["element"]}})
    issuer.tokens["ok"] = {**active_claims(), "aud": ["bridge"], "client_id": "element"}
    issuer.tokens["other-aud"] = {**active_claims(), "aud": "other", "client_id": "element"}
    issuer.tokens["other-client"] = {**active_claims(), "aud": "bridge", "client_id": "bot"}
    assert (await bridge.get(WHOAMI, headers=bearer("ok"))).status == 200
    assert (await bridge.get(WHOAMI, headers=bearer("other-aud"))).status == 401
    assert (await bridge.get(WHOAMI, headers=bearer("other-client"))).status == 401


async def test_missing_token_is_401_without_asking_anyone(
    bridge: BridgeClient, issuer: FakeIssuer, homeserver: FakeHomeserver
) -> None:
    resp = await bridge.get(WHOAMI)
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_MISSING_TOKEN"
    assert issuer.introspections == []
    assert homeserver.requests == []


# ---------------------------------------------------------------------------------------
# How the bridge authenticates to the introspection endpoint


def assert_token_form(issuer: FakeIssuer) -> None:
    (request,) = issuer.introspections
    assert request.form.getall("token") == [TOKEN]
    assert request.form.getall("token_type_hint") == ["access_token"]


async def test_client_secret_basic_form_urlencodes_id_and_secret(
    make_bridge: MakeBridge, issuer: FakeIssuer
) -> None:
    client_id, secret = "bridge:client", "s3:cr+t with/%"
    bridge = await make_bridge(
        {
            "issuer": {
                "introspection": {
                    "auth": "client_secret_basic",
                    "client_id": client_id,
                    "client_secret": secret,
                }
            }
        }
    )
    resp = await bridge.get(WHOAMI, headers=bearer(TOKEN))
    assert resp.status == 200

    assert_token_form(issuer)
    (request,) = issuer.introspections
    scheme, _, encoded = request.headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    decoded = base64.b64decode(encoded).decode()
    # RFC 6749 §2.3.1: the only literal ":" is the separator; "+" must not read as a space.
    assert decoded.count(":") == 1
    raw_id, raw_secret = decoded.split(":")
    assert (unquote_plus(raw_id), unquote_plus(raw_secret)) == (client_id, secret)
    assert "client_secret" not in request.form
    assert "client_id" not in request.form


async def test_client_secret_post_puts_credentials_in_the_form(
    make_bridge: MakeBridge, issuer: FakeIssuer
) -> None:
    bridge = await make_bridge(
        {
            "issuer": {
                "introspection": {
                    "auth": "client_secret_post",
                    "client_id": "bridge",
                    "client_secret": "p0st:se+cret",
                }
            }
        }
    )
    resp = await bridge.get(WHOAMI, headers=bearer(TOKEN))
    assert resp.status == 200

    assert_token_form(issuer)
    (request,) = issuer.introspections
    assert request.form.getall("client_id") == ["bridge"]
    assert request.form.getall("client_secret") == ["p0st:se+cret"]
    assert "Authorization" not in request.headers


async def test_mas_shared_secret_is_a_bearer_with_device_id_support(
    make_bridge: MakeBridge, issuer: FakeIssuer
) -> None:
    bridge = await make_bridge(
        {
            "issuer": {
                "introspection": {
                    "auth": "mas_shared_secret",
                    "client_id": None,
                    "client_secret": "mas-shared-secret",
                }
            }
        }
    )
    resp = await bridge.get(WHOAMI, headers=bearer(TOKEN))
    assert resp.status == 200

    assert_token_form(issuer)
    (request,) = issuer.introspections
    assert request.headers.getall("Authorization") == ["Bearer mas-shared-secret"]
    assert request.headers["X-MAS-Supports-Device-Id"] == "1"
    assert "client_id" not in request.form
    assert "client_secret" not in request.form


# ---------------------------------------------------------------------------------------
# Discovery


async def assert_issuer_unavailable(bridge: BridgeClient, path: str) -> None:
    resp = await bridge.get(path)
    assert resp.status == 503
    assert (await resp.json())["errcode"] == "M_UNKNOWN"
    assert "Retry-After" in resp.headers


async def test_discovery_naming_another_issuer_is_refused(
    make_bridge: MakeBridge, issuer: FakeIssuer, homeserver: FakeHomeserver
) -> None:
    issuer.discovery_issuer = issuer.url.rstrip("/")  # the trailing slash is part of the name
    bridge = await make_bridge()
    assert issuer.discovery_requests >= 1

    await assert_issuer_unavailable(bridge, AUTH_METADATA)
    await assert_issuer_unavailable(bridge, AUTH_METADATA_MSC2965)
    # Without trusted metadata no token can be judged: 503, never 401.
    resp = await bridge.get(WHOAMI, headers=bearer(TOKEN))
    assert resp.status == 503
    assert issuer.introspections == []
    assert homeserver.requests == []


async def test_auth_metadata_is_the_issuers_document_on_both_paths(
    bridge: BridgeClient, issuer: FakeIssuer
) -> None:
    stable = await bridge.get(AUTH_METADATA)
    unstable = await bridge.get(AUTH_METADATA_MSC2965)
    assert stable.status == unstable.status == 200
    stable_body, unstable_body = await stable.read(), await unstable.read()
    assert stable_body == unstable_body
    assert await stable.json() == issuer.discovery_document()
    assert stable.content_type == "application/json"
    for resp in (stable, unstable):
        max_age = re.search(r"max-age=(\d+)", resp.headers["Cache-Control"])
        assert max_age is not None
        assert int(max_age[1]) > 0

    resp = await bridge.get(AUTH_ISSUER)
    assert resp.status == 200
    assert await resp.json() == {"issuer": issuer.url}


async def test_well_known_client_names_the_same_issuer_everywhere(
    bridge: BridgeClient, issuer: FakeIssuer
) -> None:
    resp = await bridge.get("/.well-known/matrix/client")
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    well_known = await resp.json()
    assert well_known["m.homeserver"]["base_url"] == PUBLIC_BASEURL
    stable = well_known["m.authentication"]
    assert well_known["org.matrix.msc2965.authentication"] == stable
    metadata = await (await bridge.get(AUTH_METADATA)).json()
    assert stable["issuer"] == metadata["issuer"] == issuer.url


async def test_well_known_account_comes_from_the_discovery_document(
    make_bridge: MakeBridge, issuer: FakeIssuer
) -> None:
    issuer.discovery_extra["account_management_uri"] = issuer.url + "account/"
    bridge = await make_bridge()
    well_known = await (await bridge.get("/.well-known/matrix/client")).json()
    assert well_known["m.authentication"]["account"] == issuer.url + "account/"


async def test_bridge_starts_while_the_issuer_is_down(
    make_bridge: MakeBridge, homeserver: FakeHomeserver
) -> None:
    down = f"http://127.0.0.1:{free_port()}/"
    bridge = await make_bridge(issuer_url=down)

    await assert_issuer_unavailable(bridge, AUTH_METADATA)
    resp = await bridge.get(AUTH_ISSUER)
    assert await resp.json() == {"issuer": down}
    resp = await bridge.get(WHOAMI, headers=bearer(TOKEN))
    assert resp.status == 503
    assert (await resp.json())["errcode"] == "M_UNKNOWN"
    assert homeserver.requests == []
