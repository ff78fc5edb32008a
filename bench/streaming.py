"""The bridge's memory while it streams 1 GiB each way and holds 2,000 long polls.

    .venv/bin/python bench/streaming.py [--size-mib N] [--long-polls N]

The bridge (masquerade, one worker) forwards to an nginx that serves a sparse
1 GiB file for the download and passes uploads and /sync on to bench/upstream.py,
which reads uploads whole and holds long polls. The bridge's RSS (its process
tree, VmRSS from /proc/<pid>/status) is sampled every 10 ms; VmHWM is reset
before each phase where the kernel lets us. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType

import aiohttp
from harness import (
    HOST,
    NOFILE,
    SERVER_NAME,
    Stack,
    bridge_config,
    free_port,
    log_findings,
    new_token,
    nginx_conf,
    process_tree,
    provisioning_locations,
    raise_nofile,
    reset_peak_rss,
    run,
    start_bridge,
    start_issuer,
    status_kib,
)

MIB = 1 << 20
STREAM_TARGET_MIB = 64
LONG_POLL_TARGET_MIB = 300
UPLOAD = "/_matrix/media/v3/upload"
DOWNLOAD = f"/_matrix/client/v1/media/download/{SERVER_NAME}/bench-1gib"
SYNC = "/_matrix/client/v3/sync"


@dataclass(frozen=True)
class Setup:
    bridge: str
    upstream: str
    pid: int


def start(stack: Stack, size: int, log_level: str) -> Setup:
    upstream_port, nginx_port, bridge_port = free_port(), free_port(), free_port()
    stack.python("upstream", "upstream.py", str(upstream_port))
    upstream = f"http://{HOST}:{upstream_port}"
    stack.wait_http("upstream", upstream + "/_bench/held")

    prefix = stack.unprivileged_dir("nginx")
    media = prefix / "media"
    (media / SERVER_NAME).mkdir(parents=True)
    with (media / SERVER_NAME / "bench-1gib").open("wb") as f:
        f.truncate(size)  # sparse: no disk used, read as zeros
    servers = f"""
server {{
  listen {HOST}:{nginx_port};
  client_max_body_size 0;
  location /_matrix/client/v1/media/download/ {{
    alias {media}/;
    default_type application/octet-stream;
    sendfile on;
  }}
  location = {UPLOAD} {{
    proxy_pass {upstream};
    proxy_http_version 1.1;
    proxy_request_buffering off;
    proxy_buffering off;
  }}
  location = {SYNC} {{ proxy_pass {upstream}; proxy_read_timeout 120s; }}
  {provisioning_locations()}
}}"""
    stack.nginx("nginx", nginx_conf(prefix, servers, worker_connections=NOFILE // 2), prefix, None)
    homeserver = f"http://{HOST}:{nginx_port}"
    stack.wait_http("nginx", homeserver + "/")

    issuer = start_issuer(stack, None)
    config = bridge_config(
        stack, "bridge", port=bridge_port, homeserver=homeserver, issuer=issuer,
        strategy="masquerade", workers=1, max_request_body="2G",
    )  # fmt: skip
    start_bridge(stack, "bridge", config, bridge_port, None, log_level)
    return Setup(f"http://{HOST}:{bridge_port}", upstream, stack.procs["bridge"].pid)


class PeakRss:
    """The bridge's RSS before, and at its peak during, a ``with`` block (in KiB)."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.base = self.peak = self.hwm = 0
        self.hwm_reset = False

    def __enter__(self) -> PeakRss:
        self._pids = process_tree(self._pid)
        self.base = self.peak = status_kib(self._pids, "VmRSS")
        self.hwm_reset = reset_peak_rss(self._pids)
        self._thread.start()
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.hwm = status_kib(self._pids, "VmHWM")

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, status_kib(self._pids, "VmRSS"))

    def growth_mib(self) -> float:
        peak = max(self.peak, self.hwm) if self.hwm_reset else self.peak
        return (peak - self.base) / 1024

    def describe(self) -> str:
        hwm = f", VmHWM {self.hwm / 1024:.1f}" if self.hwm_reset else ""
        return (
            f"RSS {self.base / 1024:.1f} MiB before, peak {self.peak / 1024:.1f}{hwm}: "
            f"growth {self.growth_mib():.1f} MiB"
        )


def verdict(value: float, target: float) -> str:
    return f"(target < {target} MiB: {'OK' if value < target else 'MISSED'})"


async def upload(session: aiohttp.ClientSession, setup: Setup, auth: str, size: int) -> str:
    async def body() -> AsyncIterator[bytes]:
        chunk = bytes(MIB)
        for offset in range(0, size, MIB):
            yield chunk[: size - offset]

    headers = {
        "Authorization": auth,
        "Content-Type": "application/octet-stream",
        "Content-Length": str(size),
    }
    started = time.monotonic()
    async with session.post(setup.bridge + UPLOAD, data=body(), headers=headers) as resp:
        answer = await resp.read()
    elapsed = time.monotonic() - started
    received = json.loads(answer).get("received") if resp.status == 200 else None
    if received != size:
        return f"FAILED: HTTP {resp.status}, upstream received {received} of {size} bytes"
    return f"{size / MIB / elapsed:.0f} MiB/s, all {size} bytes reached the upstream"


async def download(session: aiohttp.ClientSession, setup: Setup, auth: str, size: int) -> str:
    started = time.monotonic()
    received = 0
    async with session.get(setup.bridge + DOWNLOAD, headers={"Authorization": auth}) as resp:
        async for chunk in resp.content.iter_chunked(MIB):
            received += len(chunk)
    elapsed = time.monotonic() - started
    if resp.status != 200 or received != size:
        return f"FAILED: HTTP {resp.status}, {received} of {size} bytes"
    return f"{size / MIB / elapsed:.0f} MiB/s, all {size} bytes"


async def held(session: aiohttp.ClientSession, setup: Setup) -> int:
    async with session.get(setup.upstream + "/_bench/held") as resp:
        count: int = (await resp.json())["held"]
        return count


async def long_polls(setup: Setup, auth: str, count: int) -> list[str]:
    """Open ``count`` long polls through the bridge; the bridge's RSS once all are held."""
    lines = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as probe:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def poll() -> int:
                url = setup.bridge + SYNC + "?timeout=30000"
                async with session.get(url, headers={"Authorization": auth}) as resp:
                    await resp.read()
                    return resp.status

            base = status_kib(process_tree(setup.pid), "VmRSS")
            started = time.monotonic()
            tasks: list[asyncio.Task[int]] = []
            for _ in range(0, count, 100):  # in batches, not to overflow listen backlogs
                tasks += [asyncio.create_task(poll()) for _ in range(min(100, count - len(tasks)))]
                await asyncio.sleep(0.02)
            open_now = 0
            while time.monotonic() - started < 60 and not any(t.done() for t in tasks):
                open_now = await held(probe, setup)
                if open_now >= count:
                    break
                await asyncio.sleep(0.1)
            rss = status_kib(process_tree(setup.pid), "VmRSS")
            done = [t for t in tasks if t.done()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if open_now < count:
            failed = {repr(t.exception() or t.result()) for t in done if not t.cancelled()}
            lines.append(
                f"only {open_now} of {count} held upstream after "
                f"{time.monotonic() - started:.0f} s; finished early: {sorted(failed)[:3]}"
            )
        rss_mib = rss / 1024
        lines.append(
            f"{open_now} held upstream after {time.monotonic() - started:.1f} s; bridge RSS "
            f"{base / 1024:.1f} MiB before, {rss_mib:.1f} MiB with them open "
            f"(+{(rss - base) / max(open_now, 1):.0f} KiB per poll) "
            + verdict(rss_mib, LONG_POLL_TARGET_MIB)
        )
        await asyncio.sleep(3)
        lines.append(
            f"3 s after the clients disconnected, the upstream still held "
            f"{await held(probe, setup)} of them"
        )
    return lines


async def measure(setup: Setup, token: str, size: int, polls: int) -> None:
    auth = f"Bearer {token}"
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        async with session.get(setup.bridge + SYNC, headers={"Authorization": auth}) as resp:
            if resp.status != 200:
                raise SystemExit(f"warm-up request: HTTP {resp.status} {await resp.text()}")
        gib = f"{size / (1 << 30):g} GiB" if size >= 1 << 30 else f"{size / MIB:g} MiB"
        for name, run in (
            (f"{gib} upload   (POST {UPLOAD}, Content-Length, streamed)", upload),
            (f"{gib} download (GET {DOWNLOAD.rsplit('/', 2)[0]}/..., nginx file)", download),
        ):
            with PeakRss(setup.pid) as rss:
                outcome = await run(session, setup, auth, size)
            print(f"{name}: {outcome}")
            print(f"    {rss.describe()} {verdict(rss.growth_mib(), STREAM_TARGET_MIB)}")
    print(f"{polls} idle long polls (GET {SYNC}?timeout=30000, held by bench/upstream.py):")
    for line in await long_polls(setup, auth, polls):
        print(f"    {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="upload/download size")
    parser.add_argument("--long-polls", type=int, default=2000, help="long polls held at once")
    parser.add_argument("--log-level", default="INFO", help="the bridge's BRIDGE_LOG_LEVEL")
    args = parser.parse_args()
    raise_nofile()
    with Stack("streaming") as stack:
        setup = start(stack, args.size_mib * MIB, args.log_level)
        print(
            "\nThrough the bridge (masquerade, listen.workers 1, max_request_body 2G); "
            f"bridge RSS from /proc/{setup.pid}/status and its children's:"
        )
        asyncio.run(measure(setup, new_token(), args.size_mib * MIB, args.long_polls))
        findings = log_findings(stack, ["bridge"])
        print("\nBridge log: " + ("no warnings or errors" if not findings else ""))
        print("\n".join(findings))


if __name__ == "__main__":
    run(main)
