"""SigningKeys: the issuer's JWKS by kid, refetch with cooldown, key types, faults.

The cooldown, the unknown-kid memory and the refresh interval are read from a
:class:`FakeClock`: the tests advance it instead of sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from bridge.config import IssuerConfig
from bridge.errors import IssuerUnavailable
from bridge.issuer.http import IssuerHTTP
from bridge.issuer.jwks import MAX_JWKS_BYTES, SigningKeys, fits
from bridge.issuer.limit import InflightLimit
from bridge.issuer.metadata import IssuerMetadata
from bridge.ops.metrics import Metrics
from tests.fakes import FakeIssuer, Fault, SigningKey, bridge_config
from tests.support.clock import FakeClock

COOLDOWN = 30.0
REFRESH_INTERVAL = 600.0
MakeKeys = Callable[..., Awaitable[SigningKeys]]


@pytest.fixture
async def issuer(aiohttp_server: AiohttpServer) -> FakeIssuer:
    return await FakeIssuer.start(aiohttp_server)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def issuer_config(issuer: FakeIssuer, **jwt: Any) -> IssuerConfig:
    settings = {
        "jwks_refetch_cooldown": COOLDOWN,
        "jwks_refresh_interval": REFRESH_INTERVAL,
        "unknown_kid_ttl": 60,
        **jwt,
    }
    overrides = {"issuer": {"validation": "jwt", "timeout": 0.5, "jwt": settings}}
    return bridge_config(issuer.url, "http://127.0.0.1:9", overrides).issuer


async def signing_keys(
    session: aiohttp.ClientSession,
    config: IssuerConfig,
    clock: FakeClock,
    *,
    limit: InflightLimit | None = None,
    max_unknown: int = 100,
    metrics: Metrics | None = None,
) -> SigningKeys:
    """SigningKeys over the fake issuer, its discovery document fetched."""
    metrics = metrics or Metrics()
    http = IssuerHTTP(session, limit or InflightLimit(8), metrics, clock, config.timeout)
    metadata = IssuerMetadata(http, config)
    await metadata.fetch()
    return SigningKeys(http, metadata, config, max_unknown=max_unknown)


@pytest.fixture
def make_keys(issuer: FakeIssuer, session: aiohttp.ClientSession, clock: FakeClock) -> MakeKeys:
    async def make(
        *,
        limit: InflightLimit | None = None,
        fetch: bool = True,
        max_unknown: int = 100,
        **jwt: Any,
    ) -> SigningKeys:
        config = issuer_config(issuer, **jwt)
        keys = await signing_keys(session, config, clock, limit=limit, max_unknown=max_unknown)
        if fetch:
            await keys.fetch()
        return keys

    return make


@pytest.fixture
async def keys(make_keys: MakeKeys) -> SigningKeys:
    return await make_keys()


async def test_keys_are_held_by_kid_and_built_for_the_tokens_algorithm(
    keys: SigningKeys, issuer: FakeIssuer
) -> None:
    assert keys.kids == {"rs-1", "es-1"}
    rs = await keys.key("rs-1", "RS256")
    es = await keys.key("es-1", "ES256")
    assert not isinstance(rs, str)
    assert not isinstance(es, str)
    assert (rs.algorithm_name, es.algorithm_name) == ("RS256", "ES256")
    assert issuer.jwks_requests == 1


@pytest.mark.parametrize(
    ("kid", "alg"),
    [
        ("rs-1", "ES256"),  # an RSA key for an EC signature
        ("es-1", "RS256"),  # an EC key for an RSA signature
        ("rs-1", "PS256"),  # the key names RS256 as its only algorithm
        ("es-1", "ES384"),  # a P-256 key for ES384
        ("rs-1", "HS256"),  # the RSA key's material as an HMAC secret
        ("rs-1", "none"),
        ("es-1", "EdDSA"),
    ],
)
async def test_a_key_never_serves_an_algorithm_its_type_does_not_fit(
    keys: SigningKeys, issuer: FakeIssuer, kid: str, alg: str
) -> None:
    reason = await keys.key(kid, alg)
    assert isinstance(reason, str)
    assert "does not fit" in reason
    assert issuer.jwks_requests == 1  # a held kid that does not fit is no reason to refetch


@pytest.mark.parametrize(
    ("jwk", "alg", "fit"),
    [
        ({"kty": "RSA"}, "RS256", True),
        ({"kty": "RSA"}, "PS512", True),
        ({"kty": "RSA", "alg": "PS256"}, "RS256", False),
        ({"kty": "EC", "crv": "P-256"}, "ES256", True),
        ({"kty": "EC", "crv": "P-384"}, "ES256", False),
        ({"kty": "EC", "crv": "P-521"}, "ES512", True),
        ({"kty": "OKP", "crv": "Ed25519"}, "EdDSA", True),
        ({"kty": "OKP", "crv": "X25519"}, "EdDSA", False),
        ({"kty": "oct"}, "HS256", False),
        ({"kty": "RSA"}, "none", False),
    ],
)
def test_fits(jwk: dict[str, str], alg: str, fit: bool) -> None:
    assert fits(jwk, alg) is fit


async def test_keys_not_for_signatures_are_ignored(make_keys: MakeKeys, issuer: FakeIssuer) -> None:
    rs = issuer.key("RS256")
    private = SigningKey.make("RS256", "private")
    private.jwk["d"] = "c2VjcmV0"
    issuer.keys += [
        SigningKey("enc", "RS256", None, {**rs.jwk, "kid": "enc", "use": "enc"}),
        SigningKey("ops", "RS256", None, {**rs.jwk, "kid": "ops", "key_ops": ["encrypt"]}),
        SigningKey("oct", "HS256", None, {"kty": "oct", "kid": "oct", "k": "c2VjcmV0"}),
        private,
        SigningKey("odd", "RS256", None, {**rs.jwk, "kid": 42}),
    ]
    keys = await make_keys()
    assert keys.kids == {"rs-1", "es-1"}


async def test_a_malformed_key_is_unusable_and_the_others_still_work(
    make_keys: MakeKeys, issuer: FakeIssuer
) -> None:
    issuer.keys += [
        SigningKey("broken-rsa", "RS256", None, {"kty": "RSA", "kid": "broken-rsa", "e": "AQAB"}),
        SigningKey("broken-ec", "ES256", None, {"kty": "EC", "kid": "broken-ec", "crv": "P-256"}),
    ]
    keys = await make_keys()
    for kid, alg in (("broken-rsa", "RS256"), ("broken-ec", "ES256")):
        assert isinstance(await keys.key(kid, alg), str)
    assert not isinstance(await keys.key("rs-1", "RS256"), str)
    assert issuer.jwks_requests == 1


async def test_an_unknown_kid_causes_one_refetch_then_is_refused_without_fetching(
    keys: SigningKeys, issuer: FakeIssuer, clock: FakeClock
) -> None:
    assert isinstance(await keys.key("made-up", "RS256"), str)
    assert issuer.jwks_requests == 2
    clock.advance(COOLDOWN * 1.5)  # even after the cooldown: the kid is known missing
    reason = await keys.key("made-up", "RS256")
    assert reason == "Token is signed with a key the issuer does not publish"
    assert issuer.jwks_requests == 2


async def test_another_unknown_kid_during_the_cooldown_is_503_not_401(
    keys: SigningKeys, issuer: FakeIssuer, clock: FakeClock
) -> None:
    await keys.key("made-up", "RS256")
    with pytest.raises(IssuerUnavailable) as info:
        await keys.key("another", "RS256")
    assert info.value.status == 503
    assert int(info.value.headers["Retry-After"]) >= 1
    assert issuer.jwks_requests == 2
    clock.advance(COOLDOWN * 1.2)
    assert isinstance(await keys.key("another", "RS256"), str)
    assert issuer.jwks_requests == 3


async def test_a_thousand_concurrent_lookups_of_one_unknown_kid_share_one_fetch(
    keys: SigningKeys, issuer: FakeIssuer
) -> None:
    issuer.jwks_delay = 0.05
    answers = await asyncio.gather(*(keys.key("made-up", "RS256") for _ in range(1000)))
    assert all(isinstance(a, str) for a in answers)
    assert issuer.jwks_requests == 2


async def test_a_flood_of_random_kids_reaches_the_issuer_once_per_cooldown(
    keys: SigningKeys, issuer: FakeIssuer, clock: FakeClock
) -> None:
    issuer.jwks_delay = 0.05
    for round_ in (1, 2):
        clock.advance(COOLDOWN * 1.2)
        answers = await asyncio.gather(
            *(keys.key(f"random-{round_}-{n}", "ES256") for n in range(1000)),
            return_exceptions=True,
        )
        assert all(isinstance(a, str | IssuerUnavailable) for a in answers)
        assert issuer.jwks_requests == 1 + round_


async def test_the_unknown_kid_memory_is_bounded(make_keys: MakeKeys, clock: FakeClock) -> None:
    keys = await make_keys(max_unknown=3, jwks_refetch_cooldown=0.1)
    for n in range(6):
        clock.advance(0.12)
        await keys.key(f"made-up-{n}", "RS256")
    assert list(keys._unknown) == ["made-up-3", "made-up-4", "made-up-5"]


async def test_a_rotated_key_is_found_by_one_refetch_and_the_old_one_still_works(
    keys: SigningKeys, issuer: FakeIssuer
) -> None:
    new = issuer.rotate("RS256")
    found = await keys.key(new.kid, "RS256")
    assert not isinstance(found, str)
    assert issuer.jwks_requests == 2
    assert not isinstance(await keys.key("rs-1", "RS256"), str)
    assert issuer.jwks_requests == 2


async def test_a_key_no_longer_published_stops_working_after_a_refresh(
    keys: SigningKeys, issuer: FakeIssuer
) -> None:
    issuer.keys = [k for k in issuer.keys if k.kid != "rs-1"]
    await keys.fetch()
    assert isinstance(await keys.key("rs-1", "RS256"), str)


async def test_a_token_without_kid_uses_the_one_key_that_fits(
    keys: SigningKeys, issuer: FakeIssuer
) -> None:
    found = await keys.key(None, "ES256")
    assert not isinstance(found, str)
    issuer.rotate("ES256")
    await keys.fetch()
    reason = await keys.key(None, "ES256")
    assert isinstance(reason, str)
    assert "several" in reason


JWKS_FAULTS = [
    pytest.param(Fault.json({"error": "server_error"}, status=500), id="500"),
    pytest.param(Fault.json({}, status=429, headers={"Retry-After": "7"}), id="429"),
    pytest.param(Fault(body=b"<html>not json", content_type="text/html"), id="invalid-json"),
    pytest.param(Fault.json([]), id="not-an-object"),
    pytest.param(Fault.json({"keys": {}}), id="keys-not-a-list"),
    pytest.param(Fault.json({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}), id="no-signing-key"),
    pytest.param(Fault(body=b" " * (MAX_JWKS_BYTES + 1)), id="too-large"),
    pytest.param(Fault.json({"keys": []}, delay=1.0), id="timeout"),
    pytest.param(Fault(status=302, body=b""), id="redirect"),
]


@pytest.mark.parametrize("fault", JWKS_FAULTS)
async def test_a_failed_fetch_is_503_and_keeps_the_keys_held(
    keys: SigningKeys, issuer: FakeIssuer, clock: FakeClock, fault: Fault
) -> None:
    issuer.jwks_fault = fault
    with pytest.raises(IssuerUnavailable) as info:
        await keys.fetch()
    assert info.value.status == 503
    if fault.status == 429:
        assert info.value.headers["Retry-After"] == "7"
    assert not isinstance(await keys.key("rs-1", "RS256"), str)  # still held
    # An unknown kid meanwhile cannot be judged: 503, never 401.
    clock.advance(COOLDOWN * 1.2)
    with pytest.raises(IssuerUnavailable):
        await keys.key("new-kid", "RS256")
    # Recovery without a restart.
    issuer.jwks_fault = None
    new = issuer.rotate("RS256")
    clock.advance(COOLDOWN * 1.2)
    assert not isinstance(await keys.key(new.kid, "RS256"), str)


async def test_connection_refused_is_503(
    make_keys: MakeKeys, issuer: FakeIssuer, aiohttp_server: AiohttpServer
) -> None:
    keys = await make_keys()
    issuer.discovery_extra["jwks_uri"] = "http://127.0.0.1:9/keys"
    await keys._metadata.fetch()
    with pytest.raises(IssuerUnavailable):
        await keys.fetch()


async def test_no_jwks_uri_is_503(make_keys: MakeKeys, issuer: FakeIssuer) -> None:
    issuer.discovery_extra["jwks_uri"] = None
    keys = await make_keys(fetch=False)
    with pytest.raises(IssuerUnavailable, match="jwks_uri"):
        await keys.fetch()


async def test_jwks_fetches_count_against_the_inflight_limit(
    make_keys: MakeKeys, issuer: FakeIssuer
) -> None:
    limit = InflightLimit(1)
    keys = await make_keys(limit=limit, fetch=False)
    with limit.slot(), pytest.raises(IssuerUnavailable, match="busy"):
        await keys.fetch()
    assert issuer.jwks_requests == 0


async def test_keys_are_loaded_in_the_background_once_the_issuer_answers(
    make_keys: MakeKeys, issuer: FakeIssuer
) -> None:
    issuer.jwks_fault = Fault.json({}, status=503)
    keys = await make_keys(fetch=False, jwks_refetch_cooldown=0.1)
    # Retried every cooldown while none was ever loaded, then every refresh interval.
    assert keys.next_refresh() == 0.1
    await keys.refresh()
    assert not keys.loaded
    assert keys.next_refresh() == 0.1
    issuer.jwks_fault = None
    await keys.refresh()
    assert keys.loaded
    assert keys.kids == {"rs-1", "es-1"}
    assert keys.next_refresh() == REFRESH_INTERVAL


@pytest.mark.parametrize(
    ("fault", "outcome"),
    [(Fault.json({}, status=404), "refused"), (Fault.json({}, status=500), "error")],
)
async def test_jwks_fetch_outcomes_are_labelled_as_for_the_other_issuer_calls(
    issuer: FakeIssuer,
    session: aiohttp.ClientSession,
    clock: FakeClock,
    fault: Fault,
    outcome: str,
) -> None:
    metrics = Metrics()
    keys = await signing_keys(session, issuer_config(issuer), clock, metrics=metrics)
    await keys.fetch()
    issuer.jwks_fault = fault
    with pytest.raises(IssuerUnavailable):
        await keys.fetch()
    counts = {o: metrics.issuer_request["jwks", o]._value.get() for o in ("ok", outcome)}
    assert counts == {"ok": 1, outcome: 1}
