"""Command line: serve, check-config, config-schema, generate-registration, probe,
rotate-key, doctor."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import yaml

from bridge.app import create_app
from bridge.config import BridgeConfig, json_schema, load_config
from bridge.errors import ConfigError
from bridge.homeserver.probe import ProbeFailed, probe
from bridge.homeserver.registration import registration
from bridge.ops.doctor import doctor_cli
from bridge.ops.metrics import MULTIPROC_ENV, mark_process_dead
from bridge.runtime import logs, serve
from bridge.runtime.systemd import Notifier, without_notify_socket
from bridge.runtime.workers import Supervisor, reuseport_sockets, worker_channel
from bridge.store import open_store

log = logging.getLogger("bridge")

# systemd's RestartPreventExitStatus= can name it: a config error will not fix itself.
EXIT_CONFIG = 11


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
        ("doctor", "check the set-up step by step and say what to fix"),
    ):
        command = commands.add_parser(name, help=help_text)
        if name == "config-schema":
            continue
        command.add_argument("-c", "--config", type=Path, required=True, help="YAML config file")
        if name == "serve":
            # Internal: how the main process starts a worker (listen.workers > 1),
            # with the fd of its channel to the main process (bridge.runtime.workers).
            command.add_argument("--worker", type=int, metavar="FD", help=argparse.SUPPRESS)
        if name == "generate-registration":
            command.add_argument(
                "-o", "--output", type=Path, required=True, help="registration file to write"
            )
    return parser


def _serve(config_path: Path, config: BridgeConfig) -> None:
    """One process (``listen.workers: 1``)."""
    logs.configure(config.logging)
    serve.run(create_app(config), config_path=config_path, configure_logging=logs.configure)


def _supervise(config_path: Path, config: BridgeConfig) -> int:
    """The main process of ``listen.workers`` > 1: starts and watches the workers."""
    if config.listen.port == 0:
        raise ConfigError(
            "listen.port", "must not be 0 with listen.workers above 1 (one port for all)"
        )
    if config.ops.enabled and config.ops.port == 0:
        raise ConfigError(
            "ops.port", "must not be 0 with listen.workers above 1 (one port for all)"
        )
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("listen.workers", "must be 1: this system has no SO_REUSEPORT")
    logs.configure(config.logging, with_pid=True)
    command = [sys.executable, "-m", "bridge", "serve"]
    command += ["-c", os.path.abspath(config_path), "--worker"]
    # prometheus-client's multiprocess mode: every worker writes its metrics into one
    # private directory, and /metrics on any of them serves the sum.
    metrics_dir = tempfile.mkdtemp(prefix="matrix-oidc-bridge-metrics-")
    log.info("the workers' metrics in %s (prometheus-client's multiprocess mode)", metrics_dir)
    try:
        supervisor = Supervisor(
            command,
            config.listen.workers,
            # The workers' own drain, and a little time for their cleanup.
            stop_timeout=config.listen.grace_period + 5.0,
            config_error_code=EXIT_CONFIG,
            env={**without_notify_socket(dict(os.environ)), MULTIPROC_ENV: metrics_dir},
            notifier=Notifier(),
            on_exit=mark_process_dead,
            reconfigure_logging=lambda: _reload_own_logging(config_path),
        )
        return supervisor.run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _reload_own_logging(config_path: Path) -> None:
    """The main process's own log settings, on SIGHUP (the workers reload themselves)."""
    try:
        logs.configure(load_config(config_path).logging, with_pid=True)
    except ConfigError as e:
        for line in e.lines():
            log.error("reload: config error: %s (nothing changed)", line)


def _serve_worker(config_path: Path, config: BridgeConfig, channel_fd: int) -> int:
    """A worker: its own application, on sockets shared with the others (SO_REUSEPORT)."""
    configure = functools.partial(logs.configure, with_pid=True)
    configure(config.logging)
    public: list[socket.socket] = []
    ops_sockets: list[socket.socket] = []
    listeners = [(config.listen.host, config.listen.port, public)]
    if (extra := config.issuer.provisioning_listen) is not None:
        listeners.append((extra.host, extra.port, public))
    if config.ops.enabled:
        listeners.append((config.ops.host, config.ops.port, ops_sockets))
    for host, port, bound in listeners:
        try:
            bound += reuseport_sockets(host, port)
        except OSError as e:
            log.error("cannot listen on %s port %d: %s", host, port, e.strerror or e)
            for sock in public + ops_sockets:
                sock.close()
            return 1
    app = create_app(config)
    # Last, so that "ready" means every other startup hook has run.
    app.cleanup_ctx.append(worker_channel(channel_fd, public + ops_sockets))
    serve.run(
        app,
        config_path=config_path,
        configure_logging=configure,
        sockets=public,
        ops_sockets=ops_sockets,
        # The main process speaks to systemd, never a worker.
        notifier=Notifier(""),
    )
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
    if args.command == "doctor":
        # The doctor reports a bad config as its first check, and goes no further.
        return asyncio.run(doctor_cli(args.config))
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
            return _serve_worker(args.config, config, args.worker)
        elif config.listen.workers > 1:
            return _supervise(args.config, config)
        else:
            _serve(args.config, config)
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
