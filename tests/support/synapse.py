"""Start a throwaway Synapse homeserver on 127.0.0.1 for the test stack.

Synapse lives in its own virtualenv (``<repo>/.venv-synapse``, made by ``make test``);
this module only writes its configuration, runs it as a subprocess and creates an
admin user through the shared-secret registration API.

With ``mas=MasMode(...)`` Synapse delegates authentication to
matrix-authentication-service (``matrix_authentication_service`` in homeserver.yaml,
``synapse/config/mas.py``); it then serves no admin registration API, so no admin
user is created.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.homeserver import register_admin, request_json, stop_process, tail
from tests.support.net import free_port, wait_http

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SYNAPSE_PYTHON = REPO_ROOT / ".venv-synapse" / "bin" / "python"
ADMIN_LOCALPART = "synapse-admin"

# Rate limiters that tests could trip; all set far out of reach.
_NO_LIMIT = {"per_second": 10000, "burst_count": 100000}
_RATE_LIMITS: dict[str, Any] = {
    **{
        key: _NO_LIMIT
        for key in (
            "rc_message",
            "rc_registration",
            "rc_admin_redaction",
            "rc_key_requests",
            "rc_3pid_validation",
            "rc_joins_per_room",
            "rc_room_creation",
            "rc_third_party_invite",
            "rc_media_create",
            "rc_delayed_event_mgmt",
            "rc_reports",
            "rc_user_directory",
            "rc_profile",
            "rc_registration_token_validity",
        )
    },
    "rc_login": {"address": _NO_LIMIT, "account": _NO_LIMIT, "failed_attempts": _NO_LIMIT},
    "rc_joins": {"local": _NO_LIMIT, "remote": _NO_LIMIT},
    "rc_invites": {"per_room": _NO_LIMIT, "per_user": _NO_LIMIT, "per_issuer": _NO_LIMIT},
    "rc_presence": {"per_user": _NO_LIMIT},
}

# Run with Synapse's interpreter: the project venv has no signedjson.
_KEYGEN = (
    "import sys, signedjson.key as k\n"
    "with open(sys.argv[1], 'w') as f: k.write_signing_keys(f, [k.generate_signing_key('a')])\n"
)


@dataclass(frozen=True)
class MasMode:
    """Synapse in MAS mode: ``endpoint`` is where it reaches MAS (introspection, metadata;
    nothing needs to listen there until a token is checked), ``secret`` the shared secret
    MAS sends to ``/_synapse/mas/*`` and Synapse sends to MAS."""

    endpoint: str
    secret: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)


@dataclass
class SynapseServer:
    """A running Synapse subprocess and the admin credentials created at start."""

    base_url: str
    server_name: str
    admin_user_id: str
    admin_token: str
    workdir: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    python: Path = field(default=DEFAULT_SYNAPSE_PYTHON, repr=False)
    mas: MasMode | None = None

    def stop(self) -> None:
        """Stop Synapse: SIGTERM, wait up to 10 s, then SIGKILL."""
        stop_process(self.process)

    def provision_as_mas(self, localpart: str, device_id: str) -> None:
        """MAS mode only: create the user and the device as MAS does, through
        ``/_synapse/mas/provision_user`` and ``/_synapse/mas/upsert_device``."""
        if self.mas is None:
            raise RuntimeError("this Synapse is not in MAS mode")
        for endpoint, body in (
            ("provision_user", {"localpart": localpart}),
            ("upsert_device", {"localpart": localpart, "device_id": device_id}),
        ):
            request_json("POST", f"{self.base_url}/_synapse/mas/{endpoint}", body, self.mas.secret)

    def logtail(self, lines: int = 50) -> str:
        """Return the last ``lines`` lines of homeserver.log (for debugging failed tests)."""
        return tail(self.workdir / "homeserver.log", lines)

    def restart(self, *, wipe: bool = False) -> None:
        """Stop Synapse and start it again on the same port, with the same
        homeserver.yaml and signing key.

        ``wipe=True`` first deletes its database (every user, device, token and
        room is gone, as after restoring an empty backup) and creates the admin
        user again (``admin_token`` changes; not in MAS mode, which has no admin user);
        the media store is kept.
        """
        self.stop()
        if wipe:
            for suffix in ("", "-wal", "-shm", "-journal"):
                (self.workdir / f"homeserver.db{suffix}").unlink(missing_ok=True)
        config_path = self.workdir / "homeserver.yaml"
        self.process = _spawn(self.python, config_path, self.workdir)
        try:
            wait_http(
                f"{self.base_url}/_matrix/client/versions",
                timeout=90,
                is_alive=lambda: self.process.poll() is None,
            )
            if wipe and self.mas is None:
                config = yaml.safe_load(config_path.read_text())
                self.admin_user_id, self.admin_token = register_admin(
                    self.base_url, str(config["registration_shared_secret"]), ADMIN_LOCALPART
                )
        except Exception as exc:
            self.stop()
            raise RuntimeError(
                f"Synapse failed to restart ({exc})\n--- synapse.out ---\n"
                f"{tail(self.workdir / 'synapse.out', 30)}\n"
                f"--- homeserver.log ---\n{self.logtail(30)}"
            ) from exc


def _write_config(
    workdir: Path,
    server_name: str,
    port: int,
    registration_files: Sequence[Path],
    shared_secret: str,
    mas: MasMode | None = None,
) -> Path:
    """Write homeserver.yaml and its log config into ``workdir``; return the config path."""
    log_config = workdir / "log.config.yaml"
    log_config.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "formatters": {
                    "precise": {
                        "format": "%(asctime)s - %(name)s - %(lineno)d - "
                        "%(levelname)s - %(request)s - %(message)s"
                    }
                },
                "handlers": {
                    "file": {
                        "class": "logging.FileHandler",
                        "formatter": "precise",
                        "filename": str(workdir / "homeserver.log"),
                        "encoding": "utf8",
                    }
                },
                "loggers": {"synapse.storage.SQL": {"level": "INFO"}},
                "root": {"level": "INFO", "handlers": ["file"]},
            }
        )
    )
    config: dict[str, Any] = {
        "server_name": server_name,
        "pid_file": str(workdir / "homeserver.pid"),
        "public_baseurl": f"http://127.0.0.1:{port}/",
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": True,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "database": {"name": "sqlite3", "args": {"database": str(workdir / "homeserver.db")}},
        "log_config": str(log_config),
        "media_store_path": str(workdir / "media_store"),
        "signing_key_path": str(workdir / "signing.key"),
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "report_stats": False,
        "registration_shared_secret": shared_secret,
        "macaroon_secret_key": secrets.token_hex(32),
        "form_secret": secrets.token_hex(32),
        "enable_registration": False,
        "app_service_config_files": [str(Path(p).resolve()) for p in registration_files],
        "serve_server_wellknown": False,
        "presence": {"enabled": False},
        "url_preview_enabled": False,
        # A fresh database's background updates, done in seconds rather than minutes:
        # until profiles_full_user_id_key_idx is built, reactivating a user fails on
        # SQLite (create_profile's ON CONFLICT has no unique index to match).
        "background_updates": {"sleep_enabled": False},
        **_RATE_LIMITS,
    }
    if mas is not None:
        # Password login, registration and 3PID changes are off by default in this mode
        # (enabling any of them is a config error, ``MasConfig.check_config_conflicts``).
        config["matrix_authentication_service"] = {
            "enabled": True,
            "endpoint": mas.endpoint,
            "secret": mas.secret,
        }
    path = workdir / "homeserver.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _spawn(python: Path, config: Path, workdir: Path) -> subprocess.Popen[bytes]:
    """Run Synapse on ``config``, its output appended to ``workdir/synapse.out``."""
    with (workdir / "synapse.out").open("ab") as out:
        return subprocess.Popen(
            [str(python), "-m", "synapse.app.homeserver", "-c", str(config)],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def start_synapse(
    *,
    workdir: Path,
    registration_files: Sequence[Path],
    server_name: str = "bridge.test",
    port: int | None = None,
    synapse_python: Path | None = None,
    mas: MasMode | None = None,
) -> SynapseServer:
    """Configure and start Synapse in a fresh ``workdir`` and create the admin user
    (in MAS mode, given ``mas``: no admin user, ``admin_token`` is empty).

    ``registration_files`` are appservice registrations (an *exclusive* namespace that
    covers ``@synapse-admin`` would block the admin's creation).  ``port`` defaults to a
    free one.  Raises ValueError for a reused workdir and RuntimeError (with the tail of
    the process output and of homeserver.log) if Synapse does not come up.
    """
    python = synapse_python or DEFAULT_SYNAPSE_PYTHON
    if not python.exists():
        raise RuntimeError(
            f"Synapse interpreter {python} is missing: run `make test` (it creates .venv-synapse)"
        )
    workdir = workdir.resolve()
    if (workdir / "homeserver.db").exists():
        raise ValueError(f"{workdir} already holds a Synapse database; use a fresh workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    shared_secret = secrets.token_hex(32)
    config = _write_config(workdir, server_name, port, registration_files, shared_secret, mas)
    subprocess.run([str(python), "-c", _KEYGEN, str(workdir / "signing.key")], check=True)

    output = workdir / "synapse.out"
    process = _spawn(python, config, workdir)
    server = SynapseServer(
        base_url=base_url,
        server_name=server_name,
        admin_user_id="",
        admin_token="",
        workdir=workdir,
        process=process,
        python=python,
        mas=mas,
    )
    try:
        wait_http(
            f"{base_url}/_matrix/client/versions",
            timeout=90,
            is_alive=lambda: process.poll() is None,
        )
        if mas is None:
            server.admin_user_id, server.admin_token = register_admin(
                base_url, shared_secret, ADMIN_LOCALPART
            )
    except Exception as exc:
        server.stop()
        raise RuntimeError(
            f"Synapse failed to start ({exc})\n--- synapse.out ---\n{tail(output, 30)}\n"
            f"--- homeserver.log ---\n{server.logtail(30)}"
        ) from exc
    return server
