"""Running one bridge process: its listeners, the ops listener, signals and systemd.

- Start-up: the application's start-up hooks run (probe, issuer, store, ...),
  then the ops listener and the public listeners start; then ``READY=1``.
- SIGHUP: the config file is read again and applied (:mod:`bridge.runtime.reload`),
  between ``RELOADING=1`` and ``READY=1``; requests in flight go on.
- SIGTERM or SIGINT: ``STOPPING=1``; the listeners stop accepting at once,
  requests in flight get up to ``listen.grace_period`` seconds to finish, then
  the process exits with 0. A second signal cuts the wait short.
- The watchdog is pinged from the event loop while systemd asks for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from bridge.config import BridgeConfig, LoggingConfig
from bridge.ops.endpoints import serving_ops
from bridge.runtime.accesslog import AccessLogger
from bridge.runtime.background import running
from bridge.runtime.reload import Reloader
from bridge.runtime.systemd import Notifier
from bridge.state import CONFIG

log = logging.getLogger("bridge.runtime.serve")


def event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's when it is installed (the ``fast`` extra): it forwards faster."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _freeze_startup_objects(_app: web.Application) -> None:
    """What start-up made lives as long as the process: never scanned again."""
    gc.collect()
    gc.freeze()


def run(
    app: web.Application,
    *,
    config_path: Path,
    configure_logging: Callable[[LoggingConfig], None],
    sockets: list[socket.socket] | None = None,
    ops_sockets: list[socket.socket] | None = None,
    notifier: Notifier | None = None,
) -> None:
    """Serve ``app`` until SIGTERM or SIGINT. ``sockets`` (already bound) or, without
    them, ``listen.host``/``listen.port`` (and the provisioning listener) are the
    public listeners; ``ops_sockets`` or ``ops.host``/``ops.port`` the ops one."""
    # Fewer collections of the young generation: a forwarded request allocates a
    # few hundred objects, nearly all freed by reference counting. Measured in bench/.
    gc.set_threshold(100_000, 50, 100)
    app.on_startup.append(_freeze_startup_objects)
    with (
        asyncio.Runner(loop_factory=event_loop) as runner,
        contextlib.suppress(asyncio.CancelledError),
    ):
        runner.run(
            _serve(
                app,
                config_path=config_path,
                configure_logging=configure_logging,
                sockets=sockets,
                ops_sockets=ops_sockets,
                notifier=notifier or Notifier(),
            )
        )


async def _serve(
    app: web.Application,
    *,
    config_path: Path,
    configure_logging: Callable[[LoggingConfig], None],
    sockets: list[socket.socket] | None,
    ops_sockets: list[socket.socket] | None,
    notifier: Notifier,
) -> None:
    config = app[CONFIG]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloader = Reloader(app, config_path, notifier, configure_logging)
    loop.add_signal_handler(signal.SIGHUP, reloader.schedule)
    runner = web.AppRunner(
        app,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("bridge.access"),
        # A client that goes away cancels its handler, and so its upstream request.
        handler_cancellation=True,
        shutdown_timeout=config.listen.grace_period,
    )
    await runner.setup()
    cleaned_up = False

    async def cleanup() -> None:
        nonlocal cleaned_up
        if not cleaned_up:
            cleaned_up = True
            await runner.cleanup()

    try:
        ops = config.ops
        async with contextlib.AsyncExitStack() as stack:
            if ops.enabled:
                # Left last: /metrics and /ready answer while the requests drain.
                await stack.enter_async_context(serving_ops(app, ops_sockets, ops.host, ops.port))
            try:
                await _start_sites(runner, config, sockets)
                notifier.ready()
                log.info("serving")
                async with running(notifier.watchdog()):
                    await stop.wait()
                    notifier.stopping()
                    log.info(
                        "stopping: no new connections; up to %gs for the requests in flight",
                        config.listen.grace_period,
                    )
                    # A second signal cuts the drain short.
                    task = asyncio.current_task()
                    assert task is not None
                    for sig in (signal.SIGTERM, signal.SIGINT):
                        loop.add_signal_handler(sig, task.cancel)
                    await cleanup()
            finally:
                await cleanup()
    finally:
        await cleanup()
        log.info("stopped")


async def _start_sites(
    runner: web.AppRunner, config: BridgeConfig, sockets: list[socket.socket] | None
) -> None:
    if sockets is not None:
        for sock in sockets:
            await web.SockSite(runner, sock).start()
        return
    await web.TCPSite(runner, config.listen.host, config.listen.port).start()
    extra = config.issuer.provisioning_listen
    if extra is not None:
        await web.TCPSite(runner, extra.host, extra.port).start()
