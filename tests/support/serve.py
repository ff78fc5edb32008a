"""``python -m bridge serve`` in a process of its own, as the serving tests run it: a
config file, a log, readiness polling, and the kill of what a test leaves running."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def accepts(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


async def until(condition: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {within}s")
        await asyncio.sleep(0.05)


def children(pid: int) -> set[int]:
    """The live (not zombie) child processes of ``pid``, from /proc/*/stat."""
    found: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        state, ppid = text[text.rindex(")") + 2 :].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(stat.parent.name))
    return found


def kill(process: subprocess.Popen[bytes]) -> None:
    """Kill a ``serve`` process that still runs, with its workers."""
    if process.poll() is None:
        workers = children(process.pid)
        process.kill()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    process.wait(timeout=30)


class Bridge:
    """One ``serve`` process with its config file and log (``bridge-PORT.yaml`` and
    ``.log`` in ``directory``). Once started, its process is in ``started``, for the
    ``processes`` fixture to kill."""

    def __init__(
        self,
        directory: Path,
        document: dict[str, Any],
        started: list[subprocess.Popen[bytes]],
    ) -> None:
        self.port: int = document["listen"]["port"]
        self.config = directory / f"bridge-{self.port}.yaml"
        self.log_path = self.config.with_suffix(".log")
        self.document = document
        self.write(document)
        self._started = started
        self._process: subprocess.Popen[bytes] | None = None

    def write(self, document: dict[str, Any]) -> None:
        self.config.write_text(yaml.safe_dump(document), encoding="utf-8")

    def start(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "bridge", "serve", "-c", str(self.config)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **(env or {})},
            )
        self._started.append(self._process)
        return self._process

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self._process is not None, "not started"
        return self._process

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ops(self) -> str:
        return f"http://127.0.0.1:{self.document['ops']['port']}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8")

    def accepts(self, port: int | None = None) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"serve exited early:\n{self.log()}")
        return accepts(port or self.port)

    async def wait(self) -> int:
        return await asyncio.to_thread(self.process.wait, 30)
