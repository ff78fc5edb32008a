"""Command line: ``serve``, ``check-config``, ``generate-registration``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from aiohttp import web

from bridge.accesslog import AccessLogger
from bridge.app import create_app
from bridge.config import BridgeConfig, load_config
from bridge.errors import ConfigError
from bridge.homeserver.registration import registration

# systemd's RestartPreventExitStatus= can name it: a config error will not fix itself.
EXIT_CONFIG = 11


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="matrix-oidc-bridge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "run the bridge"),
        ("check-config", "validate the configuration file and exit"),
        ("generate-registration", "write the appservice registration for the homeserver"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("-c", "--config", type=Path, required=True, help="YAML config file")
        if name == "generate-registration":
            command.add_argument(
                "-o", "--output", type=Path, required=True, help="registration file to write"
            )
    return parser


def _serve(config: BridgeConfig) -> None:
    logging.basicConfig(
        level=os.environ.get("BRIDGE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    web.run_app(
        create_app(config),
        host=config.listen.host,
        port=config.listen.port,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("bridge.access"),
        print=None,
        shutdown_timeout=10.0,
    )


def _write_registration(config: BridgeConfig, output: Path) -> None:
    text = yaml.safe_dump(registration(config.appservice, config.server_name), sort_keys=False)
    # It holds both tokens: readable by its owner only.
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # the mode above applies to a new file only
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"matrix-oidc-bridge: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        print(f"{args.config}: OK")
    elif args.command == "generate-registration":
        _write_registration(config, args.output)
        print(f"wrote {args.output}")
    else:
        _serve(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
