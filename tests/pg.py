"""A throwaway PostgreSQL cluster for tests and benchmarks: initdb into a temp dir, start, stop, remove.

The cluster listens on 127.0.0.1 at a free port (password login, scram-sha-256) and on a unix
socket in its own directory (trust, for the superuser that creates roles and databases). As
root, initdb and the server run as the `postgres` user, which the Debian package creates.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROLE = "exfilguard"


class PgUnavailable(Exception):
    """No PostgreSQL server binaries here (the reason is the message)."""


def bindir() -> Path:
    """Where initdb and pg_ctl live: `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin."""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        path = Path(out.stdout.strip())
        if (path / "initdb").exists():
            return path
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise PgUnavailable(
            "no PostgreSQL server binaries (apt-get install postgresql; scripts/bootstrap does)"
        )
    return found[-1].parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PgCluster:
    """One running throwaway cluster; `url()` names a database of it as the collector config would."""

    base: Path
    bin: Path
    port: int
    password: str = field(default_factory=lambda: secrets.token_hex(12))
    owner: str | None = None  # OS user the server runs as (None: the current one)
    _counter: int = 0

    @property
    def data(self) -> Path:
        """The data directory."""
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        """Where the server puts its unix socket."""
        return self.base / "sock"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        command = list(argv)
        if self.owner is not None:
            command = ["runuser", "-u", self.owner, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)

    def init(self, durable: bool = False) -> None:
        """initdb with password logins over TCP; `durable=False` turns fsync off (tests only)."""
        done = self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
            "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        if done.returncode != 0:
            raise PgUnavailable(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
        settings = [
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.socket_dir}'",
            "max_connections = 200",
            "shared_buffers = 64MB",
        ]
        if not durable:
            settings += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(settings) + "\n")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        log = self.base / "server.log"
        done = self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(log), "-w", "-t", "60", "start"
        )
        if done.returncode != 0:
            text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise PgUnavailable(f"pg_ctl start failed: {done.stderr.strip()}\n{text}")

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server, at once by default (its data stays; with fsync off, as tests run it, only
        a `fast` stop keeps what was committed last)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Restart the server as an admin would (`-m fast`: clients dropped, committed data kept)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        self.start()

    def admin(self) -> psycopg.Connection[tuple[Any, ...]]:
        """A superuser connection over the unix socket (autocommit)."""
        return psycopg.connect(
            host=str(self.socket_dir), port=self.port, user="postgres", dbname="postgres", autocommit=True
        )

    def create_role(self) -> None:
        """The role ExfilGuard logs in as, with a password (as docs/deploy.md sets it up)."""
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(ROLE), sql.Literal(self.password)
                )
            )

    def create_database(self, prefix: str = "exfilguard") -> str:
        """A new empty database owned by the ExfilGuard role; returns its name."""
        self._counter += 1
        name = f"{prefix}_{os.getpid()}_{self._counter}"
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(ROLE))
            )
        return name

    def url(self, database: str, *, password: str | None = "") -> str:
        """postgresql:// URL of a database; the real password by default, None for none."""
        secret = self.password if password == "" else password
        auth = ROLE if secret is None else f"{ROLE}:{secret}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def remove(self) -> None:
        """Stop and delete everything."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def throwaway_cluster(durable: bool = False) -> Iterator[PgCluster]:
    """A started cluster with the ExfilGuard role, removed afterwards; PgUnavailable if it cannot be."""
    binaries = bindir()
    owner: str | None = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError as exc:
            raise PgUnavailable("running as root but there is no postgres user to run the server") from exc
        owner = "postgres"
    base = Path(tempfile.mkdtemp(prefix="exfilguard-pg-"))
    (base / "sock").mkdir()
    if owner is not None:
        entry = pwd.getpwnam(owner)
        for path in (base, base / "sock"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    cluster = PgCluster(base, binaries, _free_port(), owner=owner)
    try:
        cluster.init(durable)
        cluster.start()
        cluster.create_role()
        yield cluster
    finally:
        cluster.remove()
