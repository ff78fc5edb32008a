"""The ops face: /metrics after traffic (parsed with prometheus-client's own parser),
/health, /ready, and request IDs; in front of the fake issuer and homeserver."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient, AiohttpServer

from bridge.app import create_app
from bridge.errors import IssuerUnavailable
from bridge.issuer.oauth import GrantRefused
from bridge.ops import metrics as m
from bridge.ops.endpoints import create_ops_app
from bridge.ops.metrics import PREFIX
from bridge.routes.provisioning import ENDPOINTS
from bridge.runtime.reload import Reloader
from bridge.runtime.systemd import Notifier
from tests.fakes import (
    BridgeClient,
    FakeHomeserver,
    FakeIssuer,
    active_claims,
    bridge_config,
    free_port,
    json_answer,
)

TOKEN = "token-of-alice"
WHOAMI = "/_matrix/client/v3/account/whoami"
OpsClient = TestClient[web.Request, web.Application]
Samples = dict[str, list[tuple[dict[str, str], float]]]


async def scrape(ops: OpsClient) -> Samples:
    """Every sample of /metrics by sample name, with its labels and value."""
    resp = await ops.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        v for found, v in samples.get(name, []) if all(found.get(k) == x for k, x in labels.items())
    )


@pytest.fixture
async def issuer(aiohttp_server: AiohttpServer) -> FakeIssuer:
    issuer = await FakeIssuer.start(aiohttp_server)
    issuer.tokens[TOKEN] = active_claims("alice", "DEVA")
    issuer.tokens["refresh-token"] = active_claims(token_type="refresh_token")
    issuer.tokens["no-scope"] = active_claims(scope="openid")
    issuer.tokens["expired"] = active_claims(exp=int(time.time()) - 3600)
    return issuer


@pytest.fixture
async def served(
    aiohttp_client: AiohttpClient, issuer: FakeIssuer, homeserver: FakeHomeserver
) -> tuple[BridgeClient, OpsClient]:
    config = bridge_config(issuer.url, homeserver.url, {"homeserver": {"admin_api_allowlist": []}})
    app = create_app(config)
    bridge = await aiohttp_client(app)
    ops = await aiohttp_client(create_ops_app(app))
    return bridge, ops


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def traffic(bridge: BridgeClient, homeserver: FakeHomeserver) -> None:
    """Requests that touch every family: forwarded, refused, cached, failed, own answers."""
    for _ in range(3):
        assert (await bridge.get(WHOAMI, headers=auth(TOKEN))).status == 200
    assert (
        await bridge.get("/_matrix/client/v3/sync?timeout=0", headers=auth(TOKEN))
    ).status == 200
    assert (await bridge.put("/_matrix/client/v3/rooms/!r:x/send/m.room.message/t1",
                             json={}, headers=auth(TOKEN))).status == 200  # fmt: skip
    for token in ("garbage", "garbage", "refresh-token", "no-scope", "expired"):
        assert (await bridge.get(WHOAMI, headers=auth(token))).status == 401
    assert (await bridge.post("/_matrix/client/v3/account/deactivate", json={})).status == 404
    assert (await bridge.get("/_synapse/admin/v1/users", headers=auth(TOKEN))).status == 403
    assert (await bridge.get("/.well-known/matrix/client")).status == 200
    assert (await bridge.get("/_matrix/client/v1/auth_metadata")).status == 200
    assert (await bridge.get("/nowhere")).status == 404
    homeserver.answer = json_answer(502, {"errcode": "M_UNKNOWN"})
    assert (await bridge.get("/_matrix/client/v3/capabilities", headers=auth(TOKEN))).status == 502
    homeserver.answer = json_answer()


async def test_metrics_after_traffic_have_every_family_with_fixed_labels(
    served: tuple[BridgeClient, OpsClient], homeserver: FakeHomeserver
) -> None:
    bridge, ops = served
    await traffic(bridge, homeserver)
    samples = await scrape(ops)

    requests = PREFIX + "requests_total"
    assert value(samples, requests, route="client", method="GET", status="2xx") == 3
    assert value(samples, requests, route="sync", method="GET", status="2xx") == 1
    assert value(samples, requests, route="client", method="PUT", status="2xx") == 1
    assert value(samples, requests, route="client", method="GET", status="4xx") == 5
    assert value(samples, requests, route="client", method="POST", status="4xx") == 1
    assert value(samples, requests, route="admin", method="GET", status="4xx") == 1
    assert value(samples, requests, route="well_known", method="GET", status="2xx") == 1
    assert value(samples, requests, route="discovery", method="GET", status="2xx") == 1
    assert value(samples, requests, route="other", method="GET", status="4xx") == 1
    assert value(samples, requests, route="client", method="GET", status="5xx") == 1
    histogram = PREFIX + "request_duration_seconds"
    # whoami 3, send 1, bad tokens 5, deactivate 1, capabilities 1
    assert value(samples, histogram + "_count", route="client") == 11
    assert value(samples, histogram + "_bucket", route="sync", le="+Inf") == 1
    assert value(samples, PREFIX + "requests_in_flight") == 0

    assert value(samples, PREFIX + "homeserver_request_duration_seconds_count", call="forward")
    assert value(samples, PREFIX + "homeserver_request_duration_seconds_count", call="long_poll")
    assert value(samples, PREFIX + "homeserver_request_duration_seconds_count", call="appservice")
    assert value(samples, PREFIX + "homeserver_errors_total", call="forward", kind="5xx") == 1

    issuer_calls = PREFIX + "issuer_requests_total"
    assert value(samples, issuer_calls, call="discovery", outcome="ok") == 1
    assert value(samples, issuer_calls, call="introspection", outcome="ok") == 5
    assert value(samples, PREFIX + "issuer_request_duration_seconds_count", call="introspection")
    assert value(samples, PREFIX + "issuer_metadata_last_success_timestamp_seconds") > 0

    lookups = PREFIX + "token_cache_lookups_total"
    assert value(samples, lookups, result="miss") == 5  # alice once, four bad tokens
    assert value(samples, lookups, result="negative_hit") == 1  # the second "garbage"
    assert value(samples, lookups, result="hit") >= 2
    assert value(samples, PREFIX + "token_cache_entries", cache="positive") == 1
    assert value(samples, PREFIX + "token_cache_entries", cache="negative") == 4
    assert PREFIX + "token_cache_evictions_total" in samples

    validations = PREFIX + "token_validations_total"
    assert value(samples, validations, outcome="valid") == 1
    assert value(samples, validations, outcome="inactive") == 1
    assert value(samples, validations, outcome="not_access_token") == 1
    assert value(samples, validations, outcome="missing_scope") == 1
    assert value(samples, validations, outcome="expired") == 1

    doors = PREFIX + "closed_door_refusals_total"
    assert value(samples, doors, rule="account_deactivation") == 1
    assert value(samples, doors, rule="admin_api") == 1
    [(labels, one)] = samples[PREFIX + "build_info"]
    assert one == 1
    assert set(labels) == {"version", "python", "aiohttp"}

    assert_fixed_labels(samples)


def assert_fixed_labels(samples: Samples) -> None:
    """Every label value comes from the fixed sets: never a path, user, device or token."""
    allowed: dict[str, tuple[str, ...]] = {
        "route": m.ROUTE_GROUPS,
        "method": m.METHODS,
        "status": m.STATUS_CLASSES,
        "call": m.ISSUER_CALLS + m.HOMESERVER_CALLS,
        "kind": m.HOMESERVER_ERRORS,
        "outcome": m.ISSUER_OUTCOMES + m.VALIDATION_OUTCOMES,
        "result": m.CACHE_LOOKUPS,
        "cache": ("positive", "negative"),
        "endpoint": tuple(ENDPOINTS),  # MAS's provisioning API, by name
        "rule": m.CLOSED_DOOR_RULES,
    }
    for name, found in samples.items():
        for labels, _ in found:
            for label, text in labels.items():
                if label in ("le", "version", "python", "aiohttp", "pid"):
                    continue
                assert text in allowed[label], (name, label, text)
                for secret in (TOKEN, "alice", "DEVA", "/_matrix", "garbage"):
                    assert secret not in text


async def test_provisioning_calls_are_counted_by_endpoint_and_status(
    aiohttp_client: AiohttpClient, issuer: FakeIssuer, homeserver: FakeHomeserver
) -> None:
    issuer.discovery_extra = {}
    config = bridge_config(
        issuer.url,
        homeserver.url,
        {
            "issuer": {
                "kind": "mas",
                "introspection": {"auth": "mas_shared_secret", "client_id": None},
            }
        },
    )
    app = create_app(config)
    bridge = await aiohttp_client(app)
    ops = await aiohttp_client(create_ops_app(app))
    secret = config.issuer.introspection.client_secret
    resp = await bridge.get("/_synapse/mas/query_user?localpart=alice", headers=auth("wrong"))
    assert resp.status == 403
    resp = await bridge.post("/_synapse/mas/delete_user", data=b"[]", headers=auth(secret))
    assert resp.status == 400
    samples = await scrape(ops)
    calls = PREFIX + "provisioning_requests_total"
    assert value(samples, calls, endpoint="query_user", status="4xx") == 1
    assert value(samples, calls, endpoint="delete_user", status="4xx") == 1
    assert value(samples, PREFIX + "requests_total", route="provisioning") == 2
    assert_fixed_labels(samples)


async def test_health_and_ready(served: tuple[BridgeClient, OpsClient]) -> None:
    _, ops = served
    resp = await ops.get("/health")
    assert (resp.status, await resp.json()) == (200, {"alive": True})
    resp = await ops.get("/ready")
    body = await resp.json()
    assert resp.status == 200, body
    assert body["ready"] is True
    assert set(body["checks"]) == {"issuer", "homeserver"}
    assert all(check["ok"] for check in body["checks"].values())


async def test_not_ready_while_the_homeserver_is_down(
    aiohttp_client: AiohttpClient, issuer: FakeIssuer
) -> None:
    app = create_app(bridge_config(issuer.url, f"http://127.0.0.1:{free_port()}"))
    await aiohttp_client(app)
    ops = await aiohttp_client(create_ops_app(app))
    resp = await ops.get("/ready")
    body = await resp.json()
    assert resp.status == 503
    assert body["checks"]["issuer"]["ok"] is True
    assert body["checks"]["homeserver"]["ok"] is False
    assert "unreachable" in body["checks"]["homeserver"]["detail"]


async def test_not_ready_while_the_issuer_is_unreachable_at_start_then_ready_without_restart(
    aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, homeserver: FakeHomeserver
) -> None:
    port = free_port()
    issuer_url = f"http://127.0.0.1:{port}/"
    app = create_app(bridge_config(issuer_url, homeserver.url))
    bridge = await aiohttp_client(app)  # starts although the issuer is down
    ops = await aiohttp_client(create_ops_app(app))
    resp = await ops.get("/ready")
    body = await resp.json()
    assert resp.status == 503
    assert body["ready"] is False
    assert body["checks"]["issuer"] == {
        "ok": False,
        "detail": "the issuer's discovery document is not loaded yet",
    }
    assert body["checks"]["homeserver"]["ok"] is True
    assert (await bridge.get(WHOAMI, headers=auth(TOKEN))).status == 503

    # The issuer comes up on its address: the bridge finds it by itself (retry every 5 s).
    issuer = FakeIssuer()
    issuer.url = issuer_url
    issuer.tokens[TOKEN] = active_claims("alice", "DEVA")
    await aiohttp_server(issuer.app(), port=port)
    deadline = time.monotonic() + 15
    while (resp := await ops.get("/ready")).status != 200:
        assert time.monotonic() < deadline, await resp.json()
        await asyncio.sleep(0.2)
    assert (await resp.json())["checks"]["issuer"]["ok"] is True
    assert (await bridge.get(WHOAMI, headers=auth(TOKEN))).status == 200


# -- request IDs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [
        ("req-123.abc_DEF", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ("", False),
        ("with space", False),
        ("new\\nline", False),
        ("ünïcode", False),
        (None, False),
    ],
)
async def test_request_id_kept_when_well_formed_forwarded_and_returned(
    served: tuple[BridgeClient, OpsClient],
    homeserver: FakeHomeserver,
    incoming: str | None,
    kept: bool,
) -> None:
    bridge, _ = served
    headers = auth(TOKEN)
    if incoming is not None:
        headers["X-Request-ID"] = incoming
    resp = await bridge.get(WHOAMI, headers=headers)
    assert resp.status == 200
    returned = resp.headers["X-Request-ID"]
    forwarded = homeserver.client_requests[-1].headers.getall("X-Request-ID")
    assert forwarded == [returned]
    if kept:
        assert returned == incoming
    else:
        assert returned != incoming
        assert len(returned) == 16
        assert int(returned, 16) >= 0


async def test_generated_request_ids_differ_and_errors_carry_one(
    served: tuple[BridgeClient, OpsClient],
) -> None:
    bridge, _ = served
    ids = set()
    for _ in range(5):
        resp = await bridge.get(WHOAMI, headers=auth("garbage"))
        assert resp.status == 401
        ids.add(resp.headers["X-Request-ID"])
    assert len(ids) == 5


async def test_requests_in_flight_counts_a_request_being_answered(
    served: tuple[BridgeClient, OpsClient], homeserver: FakeHomeserver
) -> None:
    bridge, ops = served
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow(_request: web.Request) -> web.StreamResponse:
        arrived.set()
        await release.wait()
        return web.json_response({})

    homeserver.answer = slow
    pending = asyncio.create_task(bridge.get(WHOAMI, headers=auth(TOKEN)))
    await asyncio.wait_for(arrived.wait(), 5)
    assert value(await scrape(ops), PREFIX + "requests_in_flight") == 1
    release.set()
    assert (await pending).status == 200
    assert value(await scrape(ops), PREFIX + "requests_in_flight") == 0


async def test_jwt_mode_counts_jwks_fetches_and_reload_changes_the_jwt_audiences(
    aiohttp_client: AiohttpClient, issuer: FakeIssuer, homeserver: FakeHomeserver
) -> None:
    config = bridge_config(issuer.url, homeserver.url, {"issuer": {"validation": "jwt"}})
    app = create_app(config)
    bridge = await aiohttp_client(app)
    ops = await aiohttp_client(create_ops_app(app))
    elsewhere = "https://elsewhere.example.test/"
    for_elsewhere = issuer.sign(issuer.access_claims(audience=elsewhere))
    for_us = issuer.sign()
    assert (await bridge.get(WHOAMI, headers=auth(for_us))).status == 200
    assert (await bridge.get(WHOAMI, headers=auth(for_elsewhere))).status == 401
    samples = await scrape(ops)
    assert value(samples, PREFIX + "issuer_requests_total", call="jwks", outcome="ok") >= 1
    assert value(samples, PREFIX + "issuer_request_duration_seconds_count", call="jwks") >= 1
    validations = PREFIX + "token_validations_total"
    assert value(samples, validations, outcome="valid") == 1
    assert value(samples, validations, outcome="wrong_audience") == 1

    # SIGHUP's apply: the new audiences hold for the JWT verifier too.
    reloaded = bridge_config(
        issuer.url, homeserver.url, {"issuer": {"validation": "jwt", "audiences": [elsewhere]}}
    )
    Reloader(app, Path("unused.yaml"), Notifier(""), lambda _logging: None).apply(reloaded)
    # The same two tokens, the first one cached and the second refused under the old
    # audiences: judged again by the new ones.
    assert (await bridge.get(WHOAMI, headers=auth(for_elsewhere))).status == 200
    assert (await bridge.get(WHOAMI, headers=auth(for_us))).status == 401


def _failed(cause: BaseException | None) -> Exception:
    error = IssuerUnavailable("the issuer could not answer")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("status", "error", "outcome"),
    [
        (200, None, "ok"),
        (400, None, "ok"),  # an answer the caller could use (introspection: not active)
        (404, _failed(None), "refused"),
        (302, _failed(None), "refused"),  # redirects are not followed
        (401, GrantRefused("invalid_grant"), "refused"),
        (503, _failed(None), "error"),
        (200, _failed(None), "error"),  # a malformed answer
        (200, _failed(ValueError("not JSON")), "error"),
        (0, _failed(TimeoutError()), "timeout"),
        (404, _failed(TimeoutError()), "timeout"),  # the body never came
        (0, _failed(aiohttp.ClientConnectionError()), "unreachable"),
        (0, RuntimeError("unexpected"), "error"),
    ],
)
def test_issuer_calls_are_labelled_by_one_rule(
    status: int, error: Exception | None, outcome: str
) -> None:
    metrics = m.Metrics()
    with contextlib.suppress(Exception), metrics.issuer_call("token") as call:
        call.status = status
        if error is not None:
            raise error
    counts = {o: metrics.issuer_request["token", o]._value.get() for o in m.ISSUER_OUTCOMES}
    assert counts == {o: 1 if o == outcome else 0 for o in m.ISSUER_OUTCOMES}
    assert sample_count(metrics, "token") == 1


def test_a_cancelled_issuer_call_is_not_counted() -> None:
    metrics = m.Metrics()
    with contextlib.suppress(asyncio.CancelledError), metrics.issuer_call("introspection"):
        raise asyncio.CancelledError
    assert not any(
        metrics.issuer_request["introspection", o]._value.get() for o in m.ISSUER_OUTCOMES
    )
    assert sample_count(metrics, "introspection") == 0


def sample_count(metrics: m.Metrics, call: str) -> float:
    name = PREFIX + "issuer_request_duration_seconds_count"
    value = metrics.registry.get_sample_value(name, {"call": call})
    assert value is not None
    return value


async def test_a_second_reload_of_the_same_file_applies_nothing_new(
    issuer: FakeIssuer, homeserver: FakeHomeserver, caplog: pytest.LogCaptureFixture
) -> None:
    # What was applied is running (every reloadable key); what was ignored is not.
    app = create_app(bridge_config(issuer.url, homeserver.url))
    reloaded = bridge_config(
        issuer.url,
        homeserver.url,
        {
            "logging": {"level": "DEBUG"},
            "token_cache": {"max_size": 7},
            "homeserver": {"admin_api_allowlist": ["/_synapse/admin/v1/server_version"]},
            "issuer": {"audiences": ["https://a.example.test/"], "client_ids": ["c"]},
            "public_baseurl": "https://moved.example.test/",
        },
    )
    reloader = Reloader(app, Path("unused.yaml"), Notifier(""), lambda _logging: None)
    caplog.set_level("INFO", "bridge.runtime")
    reloader.apply(reloaded)
    assert (
        "reload: applying homeserver.admin_api_allowlist, issuer.audiences, issuer.client_ids, "
        "logging.level, token_cache.max_size" in caplog.text
    )
    caplog.clear()
    reloader.apply(reloaded)
    assert "reload: applying nothing new" in caplog.text
    assert "public_baseurl changed; ignored until the next restart" in caplog.text


async def test_reload_keeps_the_running_public_baseurl_as_the_default_jwt_audience(
    aiohttp_client: AiohttpClient,
    issuer: FakeIssuer,
    homeserver: FakeHomeserver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # public_baseurl is not reloadable (logged as ignored): the JWT verifier's default
    # audience, which is public_baseurl, must not follow the file either.
    app = create_app(bridge_config(issuer.url, homeserver.url, {"issuer": {"validation": "jwt"}}))
    bridge = await aiohttp_client(app)
    moved = "https://moved.example.test/"
    reloaded = bridge_config(
        issuer.url, homeserver.url, {"issuer": {"validation": "jwt"}, "public_baseurl": moved}
    )
    Reloader(app, Path("unused.yaml"), Notifier(""), lambda _logging: None).apply(reloaded)
    assert "public_baseurl changed; ignored until the next restart" in caplog.text
    assert (await bridge.get(WHOAMI, headers=auth(issuer.sign()))).status == 200
    moved_token = issuer.sign(issuer.access_claims(audience=moved))
    assert (await bridge.get(WHOAMI, headers=auth(moved_token))).status == 401
