"""Start a throwaway PostgreSQL server on 127.0.0.1 for the store tests.

The server binaries (``initdb``, ``pg_ctl``) come from the PATH or from
Debian's ``/usr/lib/postgresql/<version>/bin`` (``make install`` installs
Debian's ``postgresql`` when neither has them). ``initdb`` refuses to run as
root, so as root every command runs as the ``postgres`` system user, on a
work directory chowned to it (its parents must let that user through: a fresh
``tempfile.mkdtemp()`` does). The cluster trusts every local connection:
loopback and its own Unix socket directory only.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.net import free_port

SUPERUSER = "postgres"


def _tail(path: Path, lines: int) -> str:
    if not path.exists():
        return f"<{path.name} does not exist>"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def find_binary(name: str) -> Path:
    """The PostgreSQL server program ``name``: on the PATH, else Debian's newest."""
    found = shutil.which(name)
    if found is not None:
        return Path(found)
    candidates = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if candidates:
        return candidates[-1]
    raise RuntimeError(f"PostgreSQL's {name} is not installed: run `make install`")


def _as_server_user() -> list[str]:
    """The command prefix that runs a program as the PostgreSQL server's user."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", SUPERUSER, "--"]


def _run(args: list[str], workdir: Path) -> None:
    result = subprocess.run(
        [*_as_server_user(), *args],
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{Path(args[0]).name} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )


@dataclass
class PostgresServer:
    """A running PostgreSQL cluster in ``workdir``, reachable on 127.0.0.1:``port``."""

    port: int
    workdir: Path

    @property
    def dsn(self) -> str:
        """The superuser's DSN for the ``postgres`` maintenance database."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        """The superuser's DSN for ``database``."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def stop(self) -> None:
        """Stop the server (fast shutdown: sessions are ended, nothing is waited for)."""
        if not (self.data_dir / "postmaster.pid").exists():
            return
        _run(
            [str(find_binary("pg_ctl")), "stop", "-D", str(self.data_dir), "-m", "fast", "-w"],
            self.workdir,
        )

    def log_tail(self, lines: int = 50) -> str:
        """The last ``lines`` lines of the server log (for debugging failed tests)."""
        return _tail(self.workdir / "postgres.log", lines)


def start_postgres(workdir: Path) -> PostgresServer:
    """Create a cluster in the empty ``workdir`` and start it on a free loopback port.

    The server listens on 127.0.0.1 and a Unix socket in ``workdir/socket``,
    with durability turned off (fsync, synchronous commit): it holds test data
    only. Raises RuntimeError, with the server log's tail, if it does not come up.
    """
    workdir = workdir.resolve()
    if any(workdir.iterdir()):
        raise ValueError(f"{workdir} is not empty; use a fresh workdir")
    (workdir / "socket").mkdir()
    if os.geteuid() == 0:
        user = pwd.getpwnam(SUPERUSER)
        for path in (workdir, workdir / "socket"):
            os.chown(path, user.pw_uid, user.pw_gid)
    data_dir = workdir / "data"
    _run(
        [
            str(find_binary("initdb")),
            "--pgdata",
            str(data_dir),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        ],
        workdir,
    )
    port = free_port()
    server = PostgresServer(port=port, workdir=workdir)
    options = " ".join(
        [
            "-c listen_addresses=127.0.0.1",
            f"-c port={port}",
            f"-c unix_socket_directories={workdir / 'socket'}",
            "-c fsync=off",
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
        ]
    )
    try:
        _run(
            [
                str(find_binary("pg_ctl")),
                "start",
                "-D",
                str(data_dir),
                "-l",
                str(workdir / "postgres.log"),
                "-o",
                options,
                "-w",
                "-t",
                "60",
            ],
            workdir,
        )
    except Exception as exc:
        server.stop()
        raise RuntimeError(
            f"PostgreSQL failed to start ({exc})\n--- postgres.log ---\n{server.log_tail(30)}"
        ) from exc
    return server
