"""Request rate and latency of the bridge against nginx and a naive aiohttp proxy.

    .venv/bin/python bench/proxy.py [--duration S] [--repeat N] [--quick]

Each target answers ``GET /_matrix/client/v3/sync`` with the same 2 KB JSON, in the
end from one nginx (a). wrk measures each at concurrency 1 and 32, N times,
interleaved; the table shows the medians. See bench/README.md.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from harness import (
    HOST,
    SYNC_BODY,
    Stack,
    StartError,
    bridge_config,
    cores,
    free_port,
    get,
    listening_processes,
    log_findings,
    new_token,
    nginx_conf,
    nginx_string,
    process_tree,
    provisioning_locations,
    raise_nofile,
    run,
    start_bridge,
    start_issuer,
)

SYNC = "/_matrix/client/v3/sync"
CONCURRENCY = (1, 32)
_SOCKET_ERRORS = r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


@dataclass(frozen=True)
class Run:
    """One wrk run."""

    rps: float
    p50_us: float
    p99_us: float
    bad: int  # non-2xx answers and socket errors


@dataclass
class Target:
    key: str
    label: str  # in the table
    short: str  # in the ratios
    url: str
    runs: dict[int, list[Run]] = field(default_factory=dict)
    optional: bool = False  # may be unavailable without failing the run
    unavailable: str | None = None
    note: str = ""

    def median(self, concurrency: int, metric: Callable[[Run], float]) -> float:
        return statistics.median(metric(r) for r in self.runs[concurrency])


def wrk(url: str, token: str, concurrency: int, duration: float, cpu: str | None) -> Run:
    threads = min(2, concurrency)
    argv = ["wrk", "--latency", f"-t{threads}", f"-c{concurrency}", f"-d{duration:g}s"]
    argv += ["-H", f"Authorization: Bearer {token}", url]
    if cpu is not None:
        argv = ["taskset", "-c", cpu, *argv]
    out = subprocess.run(
        argv, capture_output=True, text=True, check=True, timeout=duration + 60
    ).stdout
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)\s*$", out, re.M))
    if rps is None or set(latency) != {"50", "99"}:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    bad = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    if errors := re.search(_SOCKET_ERRORS, out):
        bad += sum(int(n) for n in errors.groups())
    return Run(float(rps[1]), _us(latency["50"]), _us(latency["99"]), bad)


def _us(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def _ms(us: float) -> str:
    return f"{us / 1000:.3f}"


def static_upstream(stack: Stack, cpu: str | None) -> str:
    """(a) nginx with fixed answers, and (b) nginx proxying to it; returns (a)'s URL."""
    static = free_port()
    prefix = stack.unprivileged_dir("nginx-static")
    servers = f"""
server {{
  listen {HOST}:{static};
  location = {SYNC} {{ return 200 '{nginx_string(SYNC_BODY)}'; }}
  {provisioning_locations()}
  location / {{ return 404 '{{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}}'; }}
}}"""
    stack.nginx("nginx-static", nginx_conf(prefix, servers), prefix, cpu)
    url = f"http://{HOST}:{static}"
    stack.wait_http("nginx-static", url + "/")
    return url


def nginx_proxy(stack: Stack, upstream: str, cpu: str | None) -> str:
    port = free_port()
    prefix = stack.unprivileged_dir("nginx-proxy")
    servers = f"""
upstream static {{ server {upstream.removeprefix("http://")}; keepalive 64; }}
server {{
  listen {HOST}:{port};
  location / {{
    proxy_pass http://static;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
  }}
}}"""
    stack.nginx("nginx-proxy", nginx_conf(prefix, servers), prefix, cpu)
    url = f"http://{HOST}:{port}"
    stack.wait_http("nginx-proxy", url + "/")
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell (median shown)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of discarded load")
    parser.add_argument("--quick", action="store_true", help="--duration 2 --repeat 1")
    parser.add_argument("--log-level", default="INFO", help="the bridge's BRIDGE_LOG_LEVEL")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.repeat = 2.0, 1
    raise_nofile()
    pin = cores()
    load_cpu = pin[0] if pin else None
    with Stack("proxy") as stack:
        token = new_token()
        targets = start_targets(stack, pin, args.log_level)
        live = []
        for target in targets:
            if target.unavailable is None:
                # Provisions the user, fills the token cache, checks the answer.
                status, body = get(target.url, token)
                if status == 200 and body == SYNC_BODY:
                    wrk(target.url, token, 32, args.warmup, load_cpu)
                    live.append(target)
                    continue
                target.unavailable = f"answered HTTP {status} {body[:200]!r}"
            if not target.optional:
                raise SystemExit(f"{target.label}: {target.unavailable}")
        for round_ in range(args.repeat):
            print(f"round {round_ + 1} of {args.repeat}", file=sys.stderr, flush=True)
            for target in live:
                for c in CONCURRENCY:
                    target.runs.setdefault(c, []).append(
                        wrk(target.url, token, c, args.duration, load_cpu)
                    )
        report(targets, args, pin)
        findings = log_findings(stack, [t.key for t in targets if t.key.startswith(("d", "e"))])
        print("\nBridge logs: " + ("no warnings or errors" if not findings else ""))
        print("\n".join(findings))


def start_targets(stack: Stack, pin: tuple[str, str] | None, log_level: str) -> list[Target]:
    """(a) to (e), started; (e) marked unavailable if its workers do not come up."""
    load_cpu, sut_cpu = (pin[0], pin[1]) if pin else (None, None)
    static = static_upstream(stack, load_cpu)
    proxy = nginx_proxy(stack, static, sut_cpu)
    port = free_port()
    stack.python("naive", "naive_proxy.py", str(port), static, cpus=sut_cpu)
    stack.wait_http("naive", f"http://{HOST}:{port}/")
    targets = [
        Target("a", "(a) nginx, static answers", "(a) static", static + SYNC),
        Target("b", "(b) nginx reverse proxy", "(b) nginx", proxy + SYNC),
        Target("c", "(c) naive aiohttp proxy", "(c) naive", f"http://{HOST}:{port}{SYNC}"),
    ]
    issuer = start_issuer(stack, load_cpu)
    for key, strategy, workers, label, short in (
        ("d-masquerade", "masquerade", 1, "(d) bridge, masquerade", "(d) masquerade"),
        ("d-device_login", "device_login", 1, "(d) bridge, device_login", "(d) device_login"),
        ("e", "masquerade", 2, "(e) bridge, 2 workers, masq.", "(e) 2 workers"),
    ):
        port = free_port()
        config = bridge_config(
            stack, key, port=port, homeserver=static, issuer=issuer,
            strategy=strategy, workers=workers,
        )  # fmt: skip
        target = Target(key, label, short, f"http://{HOST}:{port}{SYNC}", optional=workers > 1)
        targets.append(target)
        try:
            start_bridge(stack, key, config, port, None if workers > 1 else sut_cpu, log_level)
            if workers > 1:
                target.note = wait_workers(stack, key, port, workers)
        except StartError as e:
            if not target.optional:
                raise
            target.unavailable = str(e)
    return targets


def wait_workers(stack: Stack, name: str, port: int, workers: int) -> str:
    """Wait until ``workers`` processes of the bridge listen on ``port``."""
    deadline = time.monotonic() + 15
    while True:
        serving = listening_processes(process_tree(stack.procs[name].pid), port)
        if serving >= workers:
            return f"{serving} bridge processes listening on port {port}"
        if time.monotonic() > deadline:
            raise StartError(
                f"listen.workers: {workers} gave {serving} process(es) listening on the port "
                "after 15 s (workers not implemented yet?)"
            )
        time.sleep(0.1)


def report(targets: list[Target], args: argparse.Namespace, pin: tuple[str, str] | None) -> None:
    print(f"\nwrk --latency, {args.duration:g} s per run, median of {args.repeat} run(s);")
    print("c=1: -t1 -c1, c=32: -t2 -c32; GET /_matrix/client/v3/sync, 2 KB JSON answer.")
    if pin:
        print(
            f"Pinned with taskset: wrk, nginx (a) and the issuer on core {pin[0]}; each proxy"
            f" under test ((b), (c), (d)) on core {pin[1]}; (e) not pinned: its workers may use"
            f" both cores, shared with wrk and nginx (a)."
        )
    else:
        print("Not pinned (fewer than two cores, or no taskset).")
    print(f"Bridge log level {args.log_level} (at INFO the access log is on, as deployed).\n")
    head = f"{'':32}{'c=1 req/s':>10}{'p50 ms':>9}{'p99 ms':>9}  {'c=32 req/s':>10}"
    print(head + f"{'p50 ms':>9}{'p99 ms':>9}")
    by_key = {t.key: t for t in targets}
    for t in targets:
        if t.unavailable is not None:
            print(f"{t.label:32}{'unavailable':>10}")
            continue
        cells = []
        for c in CONCURRENCY:
            bad = sum(r.bad for r in t.runs[c])
            rps = f"{t.median(c, lambda r: r.rps):.0f}" + ("!" if bad else "")
            cells.append(
                f"{rps:>10}{_ms(t.median(c, lambda r: r.p50_us)):>9}"
                f"{_ms(t.median(c, lambda r: r.p99_us)):>9}"
            )
        print(f"{t.label:32}" + "  ".join(cells))
    if any(r.bad for t in targets for runs in t.runs.values() for r in runs):
        print("! some answers were not 2xx, or sockets failed: that number is suspect")
    for t in targets:
        if t.note:
            print(f"({t.key}) {t.note}")
        if t.unavailable is not None:
            print(f"({t.key}) unavailable: {t.unavailable}")

    def rps32(key: str) -> float:
        return by_key[key].median(32, lambda r: r.rps)

    print("\nreq/s ratios at c=32:")
    for top, bottom in (
        ("d-masquerade", "c"),
        ("d-device_login", "c"),
        ("e", "d-masquerade"),
        ("d-masquerade", "b"),
        ("d-device_login", "b"),
    ):
        label = f"{by_key[top].short} / {by_key[bottom].short}"
        if by_key[top].unavailable is not None:
            print(f"  {label:36}  unavailable")
        else:
            print(f"  {label:36}{rps32(top) / rps32(bottom):6.2f}")
    base = by_key["a"].median(1, lambda r: r.p50_us)
    print(f"\nAdded median latency at c=1 (p50 minus (a)'s {base:.0f} µs):")
    for key in ("d-masquerade", "d-device_login", "c", "b"):
        added = by_key[key].median(1, lambda r: r.p50_us) - base
        print(f"  {by_key[key].short + ' - (a)':36}{added:+6.0f} µs")


if __name__ == "__main__":
    run(main)
