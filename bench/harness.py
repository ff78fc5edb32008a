"""What the bench scripts share: processes, temp dirs, nginx, the issuer, bridge configs.

Everything listens on 127.0.0.1 only. Each process is started in a session of its
own (so Ctrl-C reaches the script alone, which then stops them) and stopped by its
process group (an nginx master with its worker, a bridge with its workers).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import yaml
from cryptography.fernet import Fernet

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
PYTHON = str(REPO / ".venv" / "bin" / "python")
SERVER_NAME = "bench.test"
USERNAME = "bench"
DEVICE_ID = "BENCHDEV"
USER_ID = f"@{USERNAME}:{SERVER_NAME}"
# Loopback sockets a process may hold: 2,000 long polls are 4,000 through a proxy.
NOFILE = 16384


def sync_body() -> bytes:
    """A fixed /sync answer of about 2 KB (one joined room with a few events)."""
    events = [
        {
            "type": "m.room.message",
            "event_id": f"$event{i:04d}abcdefghijklmnopqrstuvwxyz",
            "sender": f"@user{i}:{SERVER_NAME}",
            "origin_server_ts": 1700000000000 + i,
            "content": {"msgtype": "m.text", "body": f"Benchmark message number {i}."},
            "unsigned": {"age": 1234 + i},
        }
        for i in range(7)
    ]
    document = {
        "next_batch": "s72595_4483_1934_12_5_1_1_0_1",
        "account_data": {"events": []},
        "presence": {"events": []},
        "device_one_time_keys_count": {"signed_curve25519": 50},
        "rooms": {
            "join": {
                f"!benchroom:{SERVER_NAME}": {
                    "timeline": {"events": events, "limited": False, "prev_batch": "t34-23535"},
                    "state": {"events": []},
                    "ephemeral": {"events": []},
                    "account_data": {"events": []},
                    "unread_notifications": {"highlight_count": 0, "notification_count": 3},
                }
            }
        },
    }
    return json.dumps(document, separators=(",", ":")).encode()


SYNC_BODY = sync_body()


def nginx_string(body: bytes) -> str:
    """``body`` for a single-quoted nginx string (``$`` through the ``$dollar`` variable)."""
    text = body.decode()
    if "'" in text or "\\" in text:
        raise ValueError("not a plain nginx string")
    return text.replace("$", "${dollar}")


def provisioning_locations() -> str:
    """nginx locations answering what the identity strategies ask of a homeserver at
    first sight of a user: register, create the device (masquerade), appservice login
    (device_login)."""
    login = {"user_id": USER_ID, "device_id": DEVICE_ID, "access_token": "hs-bench-device-token"}
    answers = {
        "= /_matrix/client/v3/register": {"user_id": USER_ID},
        "~ ^/_matrix/client/v3/devices/": {},
        "= /_matrix/client/v3/login": login,
    }
    return "\n".join(
        f"location {match} {{ return 200 '{json.dumps(body)}'; }}"
        for match, body in answers.items()
    )


def nginx_conf(prefix: Path, servers: str, *, worker_connections: int = 4096) -> str:
    """A whole nginx.conf: one worker, every path inside ``prefix``, no access log."""
    temp = "\n".join(
        f"{kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections {worker_connections}; }}
http {{
  access_log off;
  {temp}
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  default_type application/json;
  geo $dollar {{ default "$"; }}
  {servers}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def raise_nofile(wanted: int = NOFILE) -> int:
    """Raise this process's open-file limit towards ``wanted`` (up to the hard limit)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def cores() -> tuple[str, str] | None:
    """(load core, core under test) when there are two cores to pin to, else None."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2 or shutil.which("taskset") is None:
        return None
    return str(allowed[0]), str(allowed[1])


def new_token() -> str:
    return "bench-" + secrets.token_urlsafe(24)


def exit_on_signals() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every ``with Stack`` cleans up."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


class StartError(Exception):
    """A process under test did not come up."""


class Stack:
    """The temp dirs and processes of one bench run; all gone when the ``with`` ends."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self._dirs = [self.dir]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def unprivileged_dir(self, name: str) -> Path:
        """A temp dir an unprivileged nginx can own (``nobody`` when run as root)."""
        path = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-{name}-"))
        self._dirs.append(path)
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        return path

    def log(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpus: str | None = None,
        unprivileged: bool = False,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` (pinned to ``cpus`` with taskset), its output in ``<name>.log``."""
        if cpus is not None:
            argv = ["taskset", "-c", cpus, *argv]
        with self.log(name).open("ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, **(env or {})},
                start_new_session=True,
                preexec_fn=_prepare_child(unprivileged=unprivileged),
            )
        self.procs[name] = proc
        return proc

    def nginx(self, name: str, conf: str, prefix: Path, cpus: str | None) -> None:
        """Run nginx in the foreground as an unprivileged user, all its files in ``prefix``."""
        path = prefix / "nginx.conf"
        path.write_text(conf)
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            for item in [prefix, *prefix.rglob("*")]:
                os.chown(item, nobody.pw_uid, nobody.pw_gid)
        argv = ["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(path)]
        self.start(name, [*argv, "-g", "daemon off;"], cpus=cpus, unprivileged=True)

    def python(self, name: str, script: str, *args: str, cpus: str | None = None) -> None:
        self.start(name, [PYTHON, str(BENCH / script), *args], cpus=cpus)

    def wait_http(self, name: str, url: str, timeout: float = 20.0) -> None:
        """Wait until ``url`` answers anything over HTTP; StartError if ``name`` died."""
        proc = self.procs[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StartError(f"{name} exited with code {proc.returncode}: {self.tail(name)}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.05)
        raise StartError(f"{name} did not answer {url} within {timeout:g} s: {self.tail(name)}")

    def tail(self, name: str, lines: int = 5) -> str:
        text = self.log(name).read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(no output)"

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        # Children may have sessions of their own (the bridge's workers): note them first.
        children = [(pid, _started(pid)) for pid in process_tree(proc.pid)[1:]]
        _stop_group(proc)
        for pid, started in children:
            if started is not None and _started(pid) == started:  # not a reused pid
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)
        for path in self._dirs:
            shutil.rmtree(path, ignore_errors=True)


def _prepare_child(*, unprivileged: bool) -> Callable[[], None]:
    nobody = pwd.getpwnam("nobody") if unprivileged and os.geteuid() == 0 else None

    def prepare() -> None:
        raise_nofile()
        if nobody is not None:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)

    return prepare


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group we started; SIGKILL to whatever is left of it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # a hung leader, or workers it left behind
    proc.wait()


def _started(pid: int) -> str | None:
    """When ``pid`` started (in clock ticks since boot), None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


def start_issuer(stack: Stack, cpus: str | None) -> str:
    """The bench issuer (bench/issuer.py); returns its issuer URL."""
    port = free_port()
    stack.python("issuer", "issuer.py", str(port), cpus=cpus)
    url = f"http://{HOST}:{port}/"
    stack.wait_http("issuer", url + ".well-known/openid-configuration")
    return url


def bridge_config(
    stack: Stack,
    name: str,
    *,
    port: int,
    homeserver: str,
    issuer: str,
    strategy: str,
    workers: int = 1,
    max_request_body: str = "50M",
) -> Path:
    """A bridge config file: cached tokens for an hour, no start probe."""
    raw: dict[str, Any] = {
        "server_name": SERVER_NAME,
        "public_baseurl": f"http://{HOST}:{port}/",
        "listen": {
            "host": HOST,
            "port": port,
            "workers": workers,
            "max_request_body": max_request_body,
        },
        "homeserver": {"url": homeserver, "strategy": strategy, "probe_at_start": False},
        "appservice": {"as_token": secrets.token_hex(32), "hs_token": secrets.token_hex(32)},
        "issuer": {
            "issuer": issuer,
            "introspection": {
                "auth": "client_secret_basic",
                "client_id": "bench",
                "client_secret": secrets.token_hex(16),
            },
        },
        "token_cache": {"max_ttl": 3600},
        # As deployed: metrics recorded, and served on an ops port of its own.
        "ops": {"enabled": True, "host": HOST, "port": free_port()},
    }
    if strategy == "device_login":
        raw["store"] = {
            "kind": "sqlite",
            "path": str(stack.dir / f"{name}.db"),
            "encryption_keys": [Fernet.generate_key().decode()],
        }
    path = stack.dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def start_bridge(
    stack: Stack, name: str, config: Path, port: int, cpus: str | None, log_level: str
) -> None:
    stack.start(
        name,
        [PYTHON, "-m", "bridge", "serve", "-c", str(config)],
        cpus=cpus,
        env={"BRIDGE_LOG_LEVEL": log_level},
    )
    stack.wait_http(name, f"http://{HOST}:{port}/.well-known/matrix/client", timeout=30)


def get(url: str, token: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """One GET with the bearer token: (status, body)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants still alive."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def status_kib(pids: Sequence[int], field: str) -> int:
    """The sum of a /proc/<pid>/status field (VmRSS, VmHWM) over ``pids``, in KiB."""
    total = 0
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith(field + ":"):
                total += int(line.split()[1])
    return total


def reset_peak_rss(pids: Sequence[int]) -> bool:
    """Reset VmHWM to the current RSS (``clear_refs`` 5; needs to own the process)."""
    try:
        for pid in pids:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def listening_processes(pids: Sequence[int], port: int) -> int:
    """How many of ``pids`` hold a socket listening on ``port`` (the bridge's workers)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    count = 0
    for pid in pids:
        try:
            fds = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        count += any(fd in inodes for fd in fds)
    return count


def log_findings(stack: Stack, names: Sequence[str], limit: int = 8) -> list[str]:
    """Warnings, errors and tracebacks in the logs of ``names``."""
    found = []
    for name in names:
        path = stack.log(name)
        if not path.exists():
            continue
        lines = path.read_text(errors="replace").splitlines()
        hits = [
            line
            for line in lines
            if any(word in line for word in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback"))
        ]
        if hits:
            found.append(f"{name}: {len(hits)} warning/error lines, e.g.")
            found.extend(f"    {line[:200]}" for line in _distinct(hits)[:limit])
    return found


def _distinct(lines: list[str]) -> list[str]:
    """Lines with different messages (timestamps stripped), first of each."""
    seen: dict[str, str] = {}
    for line in lines:
        key = line.split(" ", 2)[-1]
        seen.setdefault(key, line)
    return list(seen.values())


def run(main: Callable[[], None]) -> None:
    """Run a bench script's ``main``: cleaned up (by its ``with Stack``) whatever happens;
    a process that did not start is a message, not a traceback."""
    exit_on_signals()
    try:
        main()
    except StartError as e:
        print(f"{Path(sys.argv[0]).name}: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        raise SystemExit(130) from None
