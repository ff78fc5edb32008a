"""Start a throwaway Dendrite homeserver on 127.0.0.1 for the test stack.

Dendrite is a Go binary built by ``make install`` into ``<repo>/.bin`` (pinned in the
Makefile); this module writes its configuration, runs it as a subprocess and creates
an admin user through the Synapse-compatible shared-secret registration API, which
Dendrite serves at ``/_synapse/admin/v1/register`` when
``client_api.registration_shared_secret`` is set.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.homeserver import register_admin, stop_process, tail
from tests.support.net import free_port, wait_http

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DENDRITE_BIN = REPO_ROOT / ".bin"
ADMIN_LOCALPART = "dendrite-admin"
LOG_NAME = "dendrite.log"

# One SQLite file per component: Dendrite's single shared database is PostgreSQL only.
_COMPONENT_DATABASES = {
    "federation_api": "federationapi",
    "key_server": "keyserver",
    "media_api": "mediaapi",
    "room_server": "roomserver",
    "sync_api": "syncapi",
    "relay_api": "relayapi",
    "mscs": "mscs",
}


@dataclass
class DendriteServer:
    """A running Dendrite subprocess and the admin credentials created at start."""

    base_url: str
    server_name: str
    admin_user_id: str
    admin_token: str
    workdir: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def stop(self) -> None:
        """Stop Dendrite: SIGTERM, wait up to 10 s, then SIGKILL."""
        stop_process(self.process)

    def logtail(self, lines: int = 50) -> str:
        """Return the last ``lines`` lines of Dendrite's log (its stdout and stderr)."""
        return tail(self.workdir / LOG_NAME, lines)


def _database(workdir: Path, name: str) -> dict[str, Any]:
    """A per-component SQLite database section."""
    return {"connection_string": f"file:{workdir / f'dendrite_{name}.db'}"}


def _config(
    workdir: Path,
    server_name: str,
    registration_files: Sequence[Path],
    shared_secret: str,
) -> dict[str, Any]:
    """Dendrite's configuration (version 2); unset keys keep Dendrite's defaults."""
    config: dict[str, Any] = {
        "version": 2,
        "global": {
            "server_name": server_name,
            "private_key": str(workdir / "matrix_key.pem"),
            # Loopback only: no federation, no key notary, no identity servers, no
            # phone-home, no presence.
            "disable_federation": True,
            "trusted_third_party_id_servers": [],
            "presence": {"enable_inbound": False, "enable_outbound": False},
            "report_stats": {"enabled": False},
            "metrics": {"enabled": False},
            "sentry": {"enabled": False},
            "dns_cache": {"enabled": False},
            # No "@_server" user and no server-notice room.
            "server_notices": {"enabled": False},
            # Embedded NATS (it never listens on a port) keeps its streams here.
            "jetstream": {
                "storage_path": str(workdir / "jetstream"),
                "addresses": [],
                "in_memory": False,
            },
            "cache": {"max_size_estimated": 64 * 1024 * 1024, "max_age": "1h"},
        },
        "app_service_api": {
            "config_files": [str(Path(p).resolve()) for p in registration_files],
        },
        "client_api": {
            "registration_disabled": True,
            "registration_shared_secret": shared_secret,
            "guests_disabled": True,
            "enable_registration_captcha": False,
            "rate_limiting": {"enabled": False},
        },
        "federation_api": {
            **_database(workdir, "federationapi"),
            "key_perspectives": [],
            "prefer_direct_fetch": False,
            "enable_relays": False,
        },
        "media_api": {
            "base_path": str(workdir / "media"),
            "dynamic_thumbnails": False,
        },
        "sync_api": {"search": {"enabled": False}},
        "user_api": {
            "account_database": _database(workdir, "userapi"),
            # The lowest cost bcrypt accepts: test passwords need no protection.
            "bcrypt_cost": 4,
            "auto_join_rooms": [],
        },
        "mscs": {"mscs": []},
        "tracing": {"enabled": False},
    }
    for section, name in _COMPONENT_DATABASES.items():
        config.setdefault(section, {})["database"] = _database(workdir, name)
    return config


def start_dendrite(
    *,
    workdir: Path,
    registration_files: Sequence[Path],
    server_name: str = "bridge.test",
    port: int | None = None,
    dendrite_bin: Path | None = None,
) -> DendriteServer:
    """Configure and start Dendrite in a fresh ``workdir`` and create the admin user.

    ``registration_files`` are appservice registrations (an *exclusive* namespace that
    covers ``@dendrite-admin`` would block the admin's creation).  ``port`` defaults
    to a free one.  ``dendrite_bin`` is the folder holding ``dendrite`` and
    ``generate-keys`` (default ``<repo>/.bin``).  Raises ValueError for a reused
    workdir and RuntimeError (with the tail of Dendrite's log) if it does not come up.
    """
    bin_dir = dendrite_bin or DEFAULT_DENDRITE_BIN
    dendrite, generate_keys = bin_dir / "dendrite", bin_dir / "generate-keys"
    for binary in (dendrite, generate_keys):
        if not binary.exists():
            raise RuntimeError(f"{binary} is missing: run `make install` (it builds Dendrite)")
    workdir = workdir.resolve()
    if (workdir / "dendrite_userapi.db").exists():
        raise ValueError(f"{workdir} already holds a Dendrite database; use a fresh workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    shared_secret = secrets.token_hex(32)
    config = workdir / "dendrite.yaml"
    config.write_text(
        yaml.safe_dump(_config(workdir, server_name, registration_files, shared_secret))
    )
    subprocess.run(
        [str(generate_keys), "-private-key", str(workdir / "matrix_key.pem")],
        check=True,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )

    # PPROFLISTEN would make Dendrite open a second listener: never inherit it.
    env = {key: value for key, value in os.environ.items() if key != "PPROFLISTEN"}
    output = workdir / LOG_NAME
    with output.open("wb") as out:
        process = subprocess.Popen(
            [
                str(dendrite),
                "-config",
                str(config),
                # HTTPS is only served with -tls-cert/-tls-key, which are never passed.
                "-http-bind-address",
                f"127.0.0.1:{port}",
            ],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = DendriteServer(
        base_url=base_url,
        server_name=server_name,
        admin_user_id="",
        admin_token="",
        workdir=workdir,
        process=process,
    )
    try:
        wait_http(
            f"{base_url}/_matrix/client/versions",
            timeout=60,
            is_alive=lambda: process.poll() is None,
        )
        server.admin_user_id, server.admin_token = register_admin(
            base_url, shared_secret, ADMIN_LOCALPART
        )
    except Exception as exc:
        server.stop()
        raise RuntimeError(
            f"Dendrite failed to start ({exc})\n--- {LOG_NAME} ---\n{server.logtail(40)}"
        ) from exc
    return server
