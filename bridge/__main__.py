"""Command line: serve, check-config, config-schema, generate-registration, probe,
rotate-key, doctor."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from bridge.accesslog import AccessLogger
from bridge.app import create_app
from bridge.config import BridgeConfig, json_schema, load_config
from bridge.errors import ConfigError
from bridge.homeserver.probe import ProbeFailed, probe
from bridge.homeserver.registration import registration
from bridge.store import open_store
from bridge.workers import Supervisor, reuseport_sockets, worker_channel

log = logging.getLogger("bridge")

# systemd's RestartPreventExitStatus= can name it: a config error will not fix itself.
EXIT_CONFIG = 11
# Seconds a stopping process waits for requests in flight (aiohttp's graceful shutdown).
SHUTDOWN_TIMEOUT = 10.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="matrix-oidc-bridge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "run the bridge"),
        ("check-config", "validate the configuration file and exit"),
        ("config-schema", "print the JSON Schema of the configuration file"),
        ("generate-registration", "write the appservice registration for the homeserver"),
        ("probe", "ask the homeserver which identity strategies work with it"),
        ("rotate-key", "re-encrypt the store with the first of store.encryption_keys"),
    ):
        command = commands.add_parser(name, help=help_text)
        if name == "config-schema":
            continue
        command.add_argument("-c", "--config", type=Path, required=True, help="YAML config file")
        if name == "serve":
            # Internal: how the main process starts a worker (listen.workers > 1),
            # with the fd of its channel to the main process (bridge.workers).
            command.add_argument("--worker", type=int, metavar="FD", help=argparse.SUPPRESS)
        if name == "generate-registration":
            command.add_argument(
                "-o", "--output", type=Path, required=True, help="registration file to write"
            )
    return parser


def _logging(*, with_pid: bool = False) -> None:
    # With several processes, each line says which one wrote it.
    pid = " [%(process)d]" if with_pid else ""
    logging.basicConfig(
        level=os.environ.get("BRIDGE_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s %(levelname)s{pid} %(name)s %(message)s",
    )
    AccessLogger.with_pid = with_pid  # its lines are formatted alike, by itself


def _run_app(
    app: web.Application,
    *,
    host: str | None = None,
    port: int | None = None,
    sock: list[socket.socket] | None = None,
) -> None:
    # Fewer collections of the young generation: a forwarded request allocates a
    # few hundred objects, nearly all freed by reference counting. Measured in bench/.
    gc.set_threshold(100_000, 50, 100)
    app.on_startup.append(_freeze_startup_objects)
    web.run_app(
        app,
        loop=_event_loop(),
        host=host,
        port=port,
        sock=sock,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("bridge.access"),
        print=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        # A client that goes away cancels its handler, and so its upstream request.
        handler_cancellation=True,
    )


async def _freeze_startup_objects(_app: web.Application) -> None:
    """What start-up made lives as long as the process: never scanned again."""
    gc.collect()
    gc.freeze()


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's when it is installed (the ``fast`` extra): it forwards faster."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _serve(config: BridgeConfig) -> None:
    """One process (``listen.workers: 1``)."""
    _logging()
    # MAS's provisioning API on a listener of its own, when configured (the routes
    # answer there only: bridge.routes.mas_api.on_its_listener).
    extra = config.issuer.provisioning_listen
    sockets = [socket.create_server((extra.host, extra.port))] if extra else None
    _run_app(create_app(config), host=config.listen.host, port=config.listen.port, sock=sockets)


def _supervise(config_path: Path, config: BridgeConfig) -> int:
    """The main process of ``listen.workers`` > 1: starts and watches the workers."""
    if config.listen.port == 0:
        raise ConfigError(
            "listen.port", "must not be 0 with listen.workers above 1 (one port for all)"
        )
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("listen.workers", "must be 1: this system has no SO_REUSEPORT")
    _logging(with_pid=True)
    command = [sys.executable, "-m", "bridge", "serve"]
    command += ["-c", os.path.abspath(config_path), "--worker"]
    supervisor = Supervisor(
        command,
        config.listen.workers,
        # The workers' own drain, and a little time for their cleanup.
        stop_timeout=SHUTDOWN_TIMEOUT + 5.0,
        config_error_code=EXIT_CONFIG,
    )
    return supervisor.run()


def _serve_worker(config: BridgeConfig, channel_fd: int) -> int:
    """A worker: its own application, on sockets shared with the others (SO_REUSEPORT)."""
    _logging(with_pid=True)
    listeners = [(config.listen.host, config.listen.port)]
    if (extra := config.issuer.provisioning_listen) is not None:
        listeners.append((extra.host, extra.port))
    sockets: list[socket.socket] = []
    for host, port in listeners:
        try:
            sockets += reuseport_sockets(host, port)
        except OSError as e:
            log.error("cannot listen on %s port %d: %s", host, port, e.strerror or e)
            for sock in sockets:
                sock.close()
            return 1
    app = create_app(config)
    # Last, so that "ready" means every other startup hook has run.
    app.cleanup_ctx.append(worker_channel(channel_fd, sockets))
    _run_app(app, sock=sockets)
    return 0


def _write_registration(config: BridgeConfig, output: Path) -> None:
    document = registration(
        config.appservice, config.server_name, strategy=config.homeserver.strategy
    )
    text = yaml.safe_dump(document, sort_keys=False)
    # It holds both tokens: readable by its owner only.
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # the mode above applies to a new file only
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


async def _probe(config: BridgeConfig) -> int:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        result = await probe(session, config)
    print(f"homeserver {config.homeserver.url} (spec versions {', '.join(result.versions)})")
    print(f"  appservice login with a device_id: {'yes' if result.appservice_login else 'no'}")
    print(f"  appservice device creation (MSC4190): {'yes' if result.device_creation else 'no'}")
    print(f"  device masquerading (MSC4326): {'yes' if result.device_masquerade else 'no'}")
    print(f"strategies that work: {', '.join(result.strategies) or 'none'}")
    configured = config.homeserver.strategy
    if configured not in result.strategies:
        print(f"the configured strategy {configured} cannot work: {result.why_not(configured)}")
        return EXIT_CONFIG
    return 0


async def _rotate_key(config: BridgeConfig) -> int:
    if config.store is None:
        raise ConfigError("store", "is not configured: there is nothing to re-encrypt")
    store = await open_store(config.store)
    try:
        count = await store.rotate_key()
    finally:
        await store.close()
    print(f"re-encrypted {count} device tokens with the first key")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "config-schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    try:
        config = load_config(args.config)
        if args.command == "check-config":
            print(f"{args.config}: OK")
        elif args.command == "generate-registration":
            _write_registration(config, args.output)
            print(f"wrote {args.output}")
        elif args.command == "probe":
            return asyncio.run(_probe(config))
        elif args.command == "rotate-key":
            return asyncio.run(_rotate_key(config))
        elif args.worker is not None:
            return _serve_worker(config, args.worker)
        elif config.listen.workers > 1:
            return _supervise(args.config, config)
        else:
            _serve(config)
    except ConfigError as e:
        for line in e.lines():
            print(f"matrix-oidc-bridge: config error: {line}", file=sys.stderr)
        return EXIT_CONFIG
    except ProbeFailed as e:
        # Transient (the homeserver may be starting): not exit code 11, so
        # systemd tries again.
        print(f"matrix-oidc-bridge: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
