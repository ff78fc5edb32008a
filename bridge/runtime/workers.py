"""``listen.workers: N``: N processes serve one port, supervised by the main process.

The main process serves nothing. It starts each worker as a new program
(``python -m bridge serve -c <config> --worker <fd>``: spawned, never forked,
so no event loop, socket or thread is shared), and each worker builds its own
application (caches, pools, store connection) and binds its own sockets with
``SO_REUSEPORT``: the kernel spreads new connections over the workers'
listening sockets.

Each worker gets one end of a socket pair, its *channel*:

- the worker writes ``ready`` on it once its startup hooks have run (so the
  main process can tell a worker that fails to start from one that dies later);
- the worker reads end-of-file on it when the main process is gone, however it
  went (even ``kill -9``), and then stops gracefully: orphaned workers never
  keep the port.

The main process:

- restarts a worker that exits while it is not stopping, after a delay that
  doubles (0.5 s to 10 s) while workers keep dying young (a crash loop does
  not spin), back to 0.5 s once a worker has lived 30 s;
- stops every worker and exits with 11 (``EXIT_CONFIG``) when one exits with
  it (a configuration error will not fix itself), and with 1 when one fails to
  start three times in a row (a worker not ready within two minutes is killed:
  a failed start);
- passes SIGTERM and SIGINT on to every worker, which drains (aiohttp's
  graceful shutdown), waits for them and exits with 0; a worker still running
  ``stop_timeout`` seconds later is killed (exit code 1). A second signal is
  passed on too, and cuts the drain short, as it does for a single process;
- passes SIGHUP on to every worker, each of which reloads its configuration
  (:mod:`bridge.runtime.reload`), and reloads its own log settings;
- alone speaks to systemd (the workers' environment has no ``NOTIFY_SOCKET``):
  ``READY=1`` once every worker is first ready, ``RELOADING=1``/``READY=1``
  around passing SIGHUP on, ``STOPPING=1``, and the watchdog's pings;
- gives the workers one private ``PROMETHEUS_MULTIPROC_DIR`` (``env``) and
  calls ``on_exit`` with the pid of each worker that exits (its live gauges
  leave the sum).

Workers run in process groups of their own, so a terminal's Ctrl-C reaches the
main process only and every worker gets exactly one signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web

from bridge.runtime.background import running
from bridge.runtime.systemd import Notifier

log = logging.getLogger("bridge.runtime.workers")

READY = b"ready\n"
# aiohttp's own default (web.run_app's backlog).
BACKLOG = 128
# Delay before a worker is started again: doubled while workers keep dying young.
RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 10.0
# A worker that lived this long was healthy: the next restart is quick again.
STABLE_UPTIME = 30.0
# Consecutive failures to start (exit before ``ready``) before the main process gives up.
START_ATTEMPTS = 3
# Seconds a worker may take to say ``ready`` (its start-up: the homeserver probe,
# the issuer's discovery, the store) before it is killed as a failed start.
START_TIMEOUT = 120.0


# ---------------------------------------------------------------------------------------
# In the worker


def reuseport_sockets(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address of ``host`` with ``SO_REUSEPORT``, not listening yet.

    Bound the way asyncio's ``create_server`` binds (``SO_REUSEADDR``, IPv6
    sockets IPv6-only). A socket joins the port's group of workers only when it
    listens, which :func:`worker_channel` makes it do once the application has
    started: until then no connection waits on a worker that is still starting,
    or that fails to.
    """
    infos = socket.getaddrinfo(
        host, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def worker_channel(
    fd: int, sockets: Sequence[socket.socket]
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry for a worker: once every startup hook before it has
    run, ``sockets`` listen and the worker says ``ready`` (so the main process, and
    anyone waiting on it, never sees a ready worker that refuses connections);
    a graceful stop (as on SIGTERM) when the main process is gone."""
    channel = socket.socket(fileno=fd)
    channel.setblocking(False)

    def on_readable() -> None:
        try:
            data = channel.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(channel.fileno())
            log.warning("the main process is gone: stopping")
            signal.raise_signal(signal.SIGTERM)

    async def ctx(_app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        for sock in sockets:
            # Connections queue until aiohttp serves the socket, right after.
            sock.listen(BACKLOG)
        # The main process may be gone already: the reader below finds out.
        with contextlib.suppress(OSError):
            channel.send(READY)
        loop.add_reader(channel.fileno(), on_readable)
        try:
            yield
        finally:
            loop.remove_reader(channel.fileno())
            channel.close()

    return ctx


# ---------------------------------------------------------------------------------------
# In the main process


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


@dataclass
class _Slot:
    """One of the N places a worker runs in, and its restart history."""

    number: int
    process: asyncio.subprocess.Process | None = None
    start_failures: int = 0
    delay: float = 0.0


class Supervisor:
    """Keeps ``count`` workers running; ``command`` plus a channel fd starts one."""

    def __init__(
        self,
        command: Sequence[str],
        count: int,
        *,
        stop_timeout: float,
        config_error_code: int,
        start_timeout: float = START_TIMEOUT,
        env: Mapping[str, str] | None = None,
        notifier: Notifier | None = None,
        on_exit: Callable[[int], None] = lambda _pid: None,
        reconfigure_logging: Callable[[], None] = lambda: None,
    ) -> None:
        self._command = list(command)
        self._env = dict(env) if env is not None else None
        self._notifier = notifier or Notifier("")
        self._on_exit = on_exit
        self._reconfigure_logging = reconfigure_logging
        self._ready_once: set[int] = set()
        self._start_timeout = start_timeout
        self._slots = [_Slot(number) for number in range(1, count + 1)]
        self._stop_timeout = stop_timeout
        self._config_error_code = config_error_code
        self._stop_signal: signal.Signals | None = None
        self._exit_code = 0
        self._stopping: asyncio.Event | None = None

    def run(self) -> int:
        """Supervise until stopped; the exit code for the main process."""
        return asyncio.run(self._run())

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        stopping = self._stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload)
        log.info("starting %d workers", len(self._slots))
        tasks = [asyncio.create_task(self._keep(slot)) for slot in self._slots]
        async with running(self._notifier.watchdog()):
            await stopping.wait()
        self._notifier.stopping()
        _, late = await asyncio.wait(tasks, timeout=self._stop_timeout)
        if late:
            for slot in self._slots:
                if slot.process is not None:
                    log.error(
                        "worker %d (pid %d) still running after %.0fs: killing it",
                        slot.number,
                        slot.process.pid,
                        self._stop_timeout,
                    )
                    self._send(slot.process, signal.SIGKILL)
            self._exit_code = self._exit_code or 1
            await asyncio.wait(late)
        log.info("all workers stopped")
        return self._exit_code

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stop_signal is None:
            log.info("%s: stopping the workers", sig.name)
        else:
            log.warning("%s while stopping: the workers stop without waiting", sig.name)
        self._stop(sig, 0)
        for slot in self._slots:
            if slot.process is not None:
                self._send(slot.process, sig)

    def _on_reload(self) -> None:
        log.info("SIGHUP: the workers reload their configuration")
        self._notifier.reloading()
        self._reconfigure_logging()
        for slot in self._slots:
            if slot.process is not None:
                self._send(slot.process, signal.SIGHUP)
        self._notifier.ready()

    def _stop(self, sig: signal.Signals, exit_code: int) -> None:
        """Start stopping (once), with ``exit_code`` for the main process."""
        assert self._stopping is not None
        if self._stop_signal is not None:
            return
        self._stop_signal = sig
        self._exit_code = exit_code
        self._stopping.set()

    def _give_up(self, exit_code: int) -> None:
        if self._stop_signal is not None:
            return
        self._stop(signal.SIGTERM, exit_code)
        for slot in self._slots:
            if slot.process is not None:
                self._send(slot.process, signal.SIGTERM)

    @staticmethod
    def _send(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)

    async def _keep(self, slot: _Slot) -> None:
        """Run a worker in ``slot``, and again when it dies, until stopping."""
        assert self._stopping is not None
        loop = asyncio.get_running_loop()
        try:
            while self._stop_signal is None:
                started = loop.time()
                pid, ready, code = await self._run_worker(slot)
                if self._stop_signal is not None:
                    self._stopped(slot, pid, code)
                    return
                what = f"worker {slot.number} (pid {pid}) {_describe(code)}"
                if code == self._config_error_code:
                    log.error("%s: a configuration error; stopping every worker", what)
                    self._give_up(code)
                    return
                if ready:
                    slot.start_failures = 0
                    if loop.time() - started >= STABLE_UPTIME:
                        slot.delay = 0.0
                else:
                    slot.start_failures += 1
                    if slot.start_failures >= START_ATTEMPTS:
                        log.error(
                            "%s before it was ready: %d failed starts in a row; "
                            "stopping every worker",
                            what,
                            slot.start_failures,
                        )
                        self._give_up(1)
                        return
                slot.delay = min(max(slot.delay * 2, RESTART_DELAY), MAX_RESTART_DELAY)
                log.warning(
                    "%s%s; starting it again in %.1fs",
                    what,
                    "" if ready else " before it was ready",
                    slot.delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), slot.delay)
        except Exception:
            log.exception("worker %d: supervision failed; stopping every worker", slot.number)
            self._give_up(1)

    def _stopped(self, slot: _Slot, pid: int, code: int) -> None:
        log.info("worker %d (pid %d) %s", slot.number, pid, _describe(code))
        # Killed by the very signal passed on (it came before the worker's
        # handler was installed): stopped as asked all the same.
        if code not in (0, -(self._stop_signal or 0)):
            self._exit_code = self._exit_code or 1

    async def _run_worker(self, slot: _Slot) -> tuple[int, bool, int]:
        """Start a worker and wait for it to exit: its pid, whether it was ready, its code."""
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair()
        with parent:
            try:
                process = await asyncio.create_subprocess_exec(
                    *self._command,
                    str(child.fileno()),
                    pass_fds=(child.fileno(),),
                    stdin=subprocess.DEVNULL,
                    # Signals come from the main process only, once.
                    process_group=0,
                    env=self._env,
                )
            finally:
                child.close()
            slot.process = process
            if self._stop_signal is not None:  # came while it was being started
                self._send(process, self._stop_signal)
            parent.setblocking(False)
            try:
                ready = await asyncio.wait_for(self._ready(loop, parent), self._start_timeout)
            except TimeoutError:
                log.error(
                    "worker %d (pid %d) not ready after %.0fs: killing it",
                    slot.number,
                    process.pid,
                    self._start_timeout,
                )
                self._send(process, signal.SIGKILL)
                ready = False
            if ready:
                log.info("worker %d (pid %d) ready", slot.number, process.pid)
                self._ready_once.add(slot.number)
                if len(self._ready_once) == len(self._slots) and self._stop_signal is None:
                    self._notifier.ready()
            code = await process.wait()
            slot.process = None
            self._on_exit(process.pid)
        return process.pid, ready, code

    @staticmethod
    async def _ready(loop: asyncio.AbstractEventLoop, channel: socket.socket) -> bool:
        """Whether the worker says ``ready`` (False: it exited before)."""
        said = b""
        while len(said) < len(READY):
            data = await loop.sock_recv(channel, len(READY) - len(said))
            if not data:
                return False
            said += data
        return said == READY
