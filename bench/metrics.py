"""What the per-request instrumentation costs: the calls ``front`` and the forwarder
add to one forwarded request, timed in a loop (single process, then prometheus-client's
multiprocess mode as with ``listen.workers`` > 1).

    python bench/metrics.py

Prints microseconds per request for each mode.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

N = 200_000

_CHILD = """
import time
from bridge.ops.metrics import Metrics
from bridge.http.request_id import RequestIDs

m = Metrics()
ids = RequestIDs()
clock = time.perf_counter
forward = m.homeserver_call_duration["forward"]
hit = m.cache_lookup["hit"]
N = {n}

def one_request():
    start = clock()
    ids.for_request(None)                     # request ID
    m.in_flight.inc()                         # front: in flight
    hit.inc()                                 # token cache hit
    t = clock(); forward.observe(clock() - t) # forwarder: homeserver duration
    m.in_flight.dec()
    m.request_done("client", "GET", 200, clock() - start)  # front: count + duration

def baseline():
    start = clock()
    ids.for_request(None)
    t = clock(); clock() - t
    clock() - start

for f in (one_request, baseline):
    for _ in range(10_000):
        f()
timings = {{}}
for f in (one_request, baseline):
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(N):
            f()
        best = min(best, time.perf_counter() - t0)
    timings[f.__name__] = best / N * 1e6
print(f"{{timings['one_request']:.2f}} {{timings['baseline']:.2f}}")
"""


def run(multiprocess: bool) -> tuple[float, float]:
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as directory:
        if multiprocess:
            env["PROMETHEUS_MULTIPROC_DIR"] = directory
        else:
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        out = subprocess.run(
            [sys.executable, "-c", _CHILD.format(n=N)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    for name, multiprocess in (("single process", False), ("multiprocess mode", True)):
        total, baseline = run(multiprocess)
        print(
            f"{name:18} instrumented {total:5.2f} µs/request, "
            f"clock and ID alone {baseline:5.2f} µs: metrics add {total - baseline:5.2f} µs"
        )


if __name__ == "__main__":
    t = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t:.0f} s)")
