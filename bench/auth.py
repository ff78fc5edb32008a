"""Token validation: what a cached token costs, what a JWT costs, what reaches the issuer.

    .venv/bin/python bench/auth.py [--quick]

1. Cache-hit validation: the middleware's hit path (``CachedAuthenticator.cached``: a
   SHA-256 of mode, issuer and token, one dict lookup, one clock comparison), median
   µs per call, for an opaque token and a JWT (target: at most 10 µs).
2. Cold JWT verification, RS256 and ES256: ``JwtVerifier.verify`` on a token the
   bridge has not cached, against PyJWT's own ``jwt.decode`` (same token, same key,
   same checks) in the same run; the ratio of their medians (target: at most 1.3).
3. Issuer calls for 200 concurrent requests with one fresh token, through a running
   bridge: introspections for an opaque token, JWKS fetches for a JWT signed with a
   key the bridge has not seen yet (target: 1 each).
4. A cached token's latency (p50, p99) through the bridge, alone and during a flood
   of 10,000 distinct garbage tokens at concurrency 200 (sent by a process of its
   own), and how many introspections the flood caused, at most how many at once.

Everything listens on 127.0.0.1. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import secrets
import statistics
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from harness import (
    DEVICE_ID,
    HOST,
    PYTHON,
    REPO,
    USERNAME,
    Stack,
    bridge_config,
    cores,
    free_port,
    log_findings,
    raise_nofile,
    run,
    start_bridge,
)
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

sys.path.insert(0, str(REPO))

from bridge.auth.cache import CachedAuthenticator, cache_namespace
from bridge.auth.identity import DeviceID, Identity, UserID
from bridge.auth.jwt_access import JwtVerifier
from bridge.auth.verifier import ClaimRules, Verdict
from bridge.config import BridgeConfig, parse_config
from bridge.issuer.http import IssuerHTTP
from bridge.issuer.jwks import SigningKeys
from bridge.issuer.limit import InflightLimit
from bridge.issuer.metadata import IssuerMetadata
from bridge.ops.metrics import Metrics
from bridge.runtime.clock import SYSTEM_CLOCK

WHOAMI = "/_matrix/client/v3/account/whoami"
VALIDATION = "jwt_then_introspection"
MAX_INFLIGHT = 64


# ---------------------------------------------------------------------------------------
# Keys and tokens


class Keys:
    """The bench issuer's signing keys; the JWKS file its peer process serves."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.private: dict[str, tuple[str, Any]] = {}  # kid → (alg, private key)
        self.add("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))
        self.add("ES256", ec.generate_private_key(ec.SECP256R1()))

    def add(self, alg: str, private: Any) -> str:
        kid = f"{alg.lower()}-{secrets.token_hex(4)}"
        self.private = {kid: (alg, private), **self.private}
        keys = []
        for key_id, (key_alg, key) in self.private.items():
            exporter = RSAAlgorithm if key_alg == "RS256" else ECAlgorithm
            jwk = exporter.to_jwk(key.public_key(), as_dict=True)
            keys.append({**jwk, "kid": key_id, "alg": key_alg, "use": "sig"})
        self.path.write_text(json.dumps({"keys": keys}))
        return kid

    def rotate(self) -> str:
        return self.add("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def newest(self, alg: str) -> str:
        return next(kid for kid, (key_alg, _) in self.private.items() if key_alg == alg)

    def sign(self, issuer: str, audience: str, kid: str) -> str:
        alg, private = self.private[kid]
        now = int(time.time())
        claims = {
            "iss": issuer,
            "sub": USERNAME,
            "aud": audience,
            "exp": now + 3600,
            "iat": now,
            "jti": secrets.token_hex(8),
            "client_id": "bench",
            "scope": f"urn:matrix:client:api:* urn:matrix:client:device:{DEVICE_ID}",
            "username": USERNAME,
        }
        return jwt.encode(claims, private, algorithm=alg, headers={"kid": kid, "typ": "at+jwt"})


# ---------------------------------------------------------------------------------------
# Micro-benchmarks (in this process)


def median_us(samples: list[float]) -> float:
    return statistics.median(samples)


def timed_batches(call: Callable[[], object], per_batch: int, batches: int) -> list[float]:
    """µs per call, one figure per batch."""
    samples = []
    for _ in range(batches):
        started = time.perf_counter_ns()
        for _ in range(per_batch):
            call()
        samples.append((time.perf_counter_ns() - started) / per_batch / 1000)
    return samples


async def timed_batches_async(
    call: Callable[[], Awaitable[object]], per_batch: int, batches: int
) -> list[float]:
    samples = []
    for _ in range(batches):
        started = time.perf_counter_ns()
        for _ in range(per_batch):
            await call()
        samples.append((time.perf_counter_ns() - started) / per_batch / 1000)
    return samples


class Always:
    """A verifier that finds every token valid (the hit path never reaches it)."""

    def __init__(self) -> None:
        self.verdict = Verdict(
            Identity(UserID(f"@{USERNAME}:bench.test"), DeviceID(DEVICE_ID), USERNAME),
            expires_at=time.time() + 3600,
        )

    async def verify(self, token: str) -> Verdict:
        return self.verdict


async def cache_hits(config: BridgeConfig, jwt_token: str, quick: bool) -> None:
    auth = CachedAuthenticator(
        Always(),
        config.token_cache,
        clock=SYSTEM_CLOCK,
        namespace=cache_namespace(config.issuer.validation, config.issuer.issuer),
    )
    opaque = "mat_" + secrets.token_urlsafe(30)
    per_batch, batches = (2_000, 50) if quick else (10_000, 200)
    print("1. Cache-hit validation (the middleware's hit path), median per call")
    for name, token in (("opaque token", opaque), (f"JWT, {len(jwt_token)} bytes", jwt_token)):
        await auth.authenticate(token)
        assert auth.cached(token) is not None
        hit = median_us(timed_batches(lambda t=token: auth.cached(t), per_batch, batches))
        coroutine = median_us(
            await timed_batches_async(lambda t=token: auth.authenticate(t), per_batch, batches)
        )
        print(
            f"   {name:<22} cached(): {hit:6.2f} µs   "
            f"(await authenticate() on a hit: {coroutine:.2f} µs)   target <= 10 µs"
        )


async def cold_jwt(config: BridgeConfig, keys: Keys, quick: bool) -> None:
    async with aiohttp.ClientSession() as session:
        http = IssuerHTTP(session, InflightLimit(8), Metrics(), SYSTEM_CLOCK, config.issuer.timeout)
        metadata = IssuerMetadata(http, config.issuer)
        await metadata.fetch()
        signing = SigningKeys(http, metadata, config.issuer, max_unknown=10)
        await signing.fetch()
        verifier = JwtVerifier(signing, metadata, config, ClaimRules.from_config(config))
        issuer = config.issuer.issuer
        audience = config.public_baseurl
        per_batch, batches = (100, 20) if quick else (200, 60)
        print("2. Cold JWT verification (no cache), median per token")
        for alg in ("RS256", "ES256"):
            kid = keys.newest(alg)
            token = keys.sign(issuer, audience, kid)
            verdict = await verifier.verify(token)
            assert verdict.identity is not None, verdict.reason
            key = jwt.PyJWK(json.loads(keys.path.read_text())["keys"][_index(keys, kid)], alg)

            def decode(token: str = token, key: jwt.PyJWK = key, alg: str = alg) -> object:
                return jwt.decode(
                    token,
                    key,
                    algorithms=[alg],
                    audience=audience,
                    issuer=issuer,
                    leeway=30,
                    options={"require": ["exp", "iss", "aud"]},
                )

            ours: list[float] = []
            theirs: list[float] = []
            for _ in range(batches):  # interleaved, so drift hits both alike
                ours += await timed_batches_async(lambda t=token: verifier.verify(t), per_batch, 1)
                theirs += timed_batches(decode, per_batch, 1)
            bridge_us, pyjwt_us = median_us(ours), median_us(theirs)
            print(
                f"   {alg}: JwtVerifier.verify {bridge_us:7.1f} µs, jwt.decode {pyjwt_us:7.1f} µs,"
                f" ratio {bridge_us / pyjwt_us:.2f}   target <= 1.3"
            )


def _index(keys: Keys, kid: str) -> int:
    return list(keys.private).index(kid)


# ---------------------------------------------------------------------------------------
# Through a running bridge


def counters(issuer: str) -> dict[str, int]:
    with urllib.request.urlopen(issuer + "_bench/counters", timeout=5) as resp:
        return {k: int(v) for k, v in json.load(resp).items()}


def reset_counters(issuer: str) -> None:
    request = urllib.request.Request(issuer + "_bench/counters/reset", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=5):
        pass


async def concurrent_once(bridge: str, token: str, concurrency: int) -> list[int]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> int:
            async with session.get(bridge + WHOAMI, headers=bearer(token)) as resp:
                await resp.read()
                return resp.status

        return await asyncio.gather(*(one() for _ in range(concurrency)))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def probe(bridge: str, token: str, until: Callable[[], bool]) -> list[float]:
    """Latencies (ms) of one request after another with ``token``, until ``until()``."""
    latencies = []
    async with aiohttp.ClientSession() as session:
        while not until():
            started = time.perf_counter()
            async with session.get(bridge + WHOAMI, headers=bearer(token)) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"the cached token got {resp.status}")
            latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.002)
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def flood(bridge: str, count: int, concurrency: int) -> None:
    """The flood process: ``count`` distinct garbage tokens, ``concurrency`` at a time;
    prints a JSON summary."""
    nonce = secrets.token_hex(4)
    pending = iter(range(count))
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=0)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for n in pending:
                headers = bearer(f"garbage-{nonce}-{n}")
                try:
                    async with session.get(bridge + WHOAMI, headers=headers) as resp:
                        await resp.read()
                        statuses[resp.status] = statuses.get(resp.status, 0) + 1
                except aiohttp.ClientError:
                    statuses[0] = statuses.get(0, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    print(json.dumps({"statuses": statuses, "seconds": elapsed}))


async def through_the_bridge(
    stack: Stack, bridge: str, issuer: str, audience: str, keys: Keys, quick: bool
) -> None:
    print("3. Issuer calls for 200 concurrent requests with one fresh token")
    reset_counters(issuer)
    fresh = "bench-" + secrets.token_urlsafe(24)
    statuses = await concurrent_once(bridge, fresh, 200)
    calls = counters(issuer)
    assert set(statuses) == {200}, statuses
    print(
        f"   opaque token (introspection):  {calls['introspection']} introspection call(s),"
        f" {calls['jwks']} JWKS fetch(es)   target 1"
    )
    reset_counters(issuer)
    kid = keys.rotate()
    token = keys.sign(issuer, audience, kid)
    statuses = await concurrent_once(bridge, token, 200)
    calls = counters(issuer)
    assert set(statuses) == {200}, statuses
    print(
        f"   JWT signed with a new key:     {calls['jwks']} JWKS fetch(es),"
        f" {calls['introspection']} introspection call(s)   target 1"
    )

    count = 2_000 if quick else 10_000
    print(f"4. A cached token during a flood of {count:,} garbage tokens at concurrency 200")
    cached = "bench-" + secrets.token_urlsafe(24)
    await concurrent_once(bridge, cached, 1)
    deadline = time.monotonic() + (1.0 if quick else 3.0)
    alone = await probe(bridge, cached, lambda: time.monotonic() > deadline)
    reset_counters(issuer)
    pin = cores()
    flooder = stack.start(
        "flood",
        [PYTHON, str(Path(__file__)), "--flood", bridge, "--count", str(count)],
        cpus=pin[0] if pin else None,
    )
    during = await probe(bridge, cached, lambda: flooder.poll() is not None)
    flooder.wait()
    summary = json.loads(stack.log("flood").read_text().strip().splitlines()[-1])
    calls = counters(issuer)
    for name, latencies in (("alone", alone), ("during the flood", during)):
        print(
            f"   cached token, {name:<17} p50 {percentile(latencies, 0.5):6.2f} ms,"
            f" p99 {percentile(latencies, 0.99):6.2f} ms  ({len(latencies)} requests)"
        )
    statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(summary["statuses"].items()))
    print(
        f"   the flood: {summary['seconds']:.1f} s ({count / summary['seconds']:,.0f} req/s),"
        f" answers {{{statuses}}}"
    )
    print(
        f"   issuer: {calls['introspection']:,} introspections, at most"
        f" {calls['introspection_max_inflight']} at once (issuer.max_inflight {MAX_INFLIGHT})"
    )


def write_config(stack: Stack, port: int, homeserver: str, issuer: str) -> Path:
    path = bridge_config(
        stack, "bridge", port=port, homeserver=homeserver, issuer=issuer, strategy="masquerade"
    )
    raw = yaml.safe_load(path.read_text())
    raw["issuer"].update({"validation": VALIDATION, "max_inflight": MAX_INFLIGHT})
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, a smaller flood")
    parser.add_argument("--flood", metavar="BRIDGE_URL", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=10_000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood:
        asyncio.run(flood(args.flood, args.count, 200))
        return
    raise_nofile()
    pin = cores()
    with Stack("auth") as stack:
        keys = Keys(stack.dir / "jwks.json")
        issuer_port, homeserver_port, bridge_port = free_port(), free_port(), free_port()
        issuer = f"http://{HOST}:{issuer_port}/"
        homeserver = f"http://{HOST}:{homeserver_port}"
        bridge = f"http://{HOST}:{bridge_port}"
        stack.python(
            "peers",
            "auth_peers.py",
            str(issuer_port),
            str(homeserver_port),
            str(keys.path),
            cpus=pin[0] if pin else None,
        )
        stack.wait_http("peers", issuer + ".well-known/openid-configuration")
        config_path = write_config(stack, bridge_port, homeserver, issuer)
        config = parse_config(yaml.safe_load(config_path.read_text()))
        audience = config.public_baseurl
        token = keys.sign(issuer, audience, keys.newest("RS256"))

        gc.collect()
        asyncio.run(cache_hits(config, token, args.quick))
        asyncio.run(cold_jwt(config, keys, args.quick))

        start_bridge(stack, "bridge", config_path, bridge_port, pin[1] if pin else None, "INFO")
        asyncio.run(through_the_bridge(stack, bridge, issuer, audience, keys, args.quick))
        findings = log_findings(stack, ["bridge", "peers"])
        if findings:
            print("\n".join(["logs:", *findings]))
    print(f"(python {sys.version.split()[0]}, {os.cpu_count()} cores; pinned: {bool(pin)})")


if __name__ == "__main__":
    run(main)
