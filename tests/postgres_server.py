"""A PostgreSQL server for the store tests, and a fresh database per test.

`ATELIER_TEST_POSTGRES_URL` names a running server (a role that may create databases; `.ci/run`
starts Debian's cluster and sets it). Without it, a throwaway cluster is made with the installed
server binaries (`initdb`/`pg_ctl` of Debian's `postgresql`, run as the `postgres` user when the
tests run as root), on a free loopback port, and removed at the end. With neither, the Postgres
tests skip, unless `ATELIER_REQUIRE_POSTGRES=1` (CI), which makes that a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _binaries() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name))
    return Path(dirs[-1]) if dirs and (Path(dirs[-1]) / "initdb").exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def throwaway_server() -> Iterator[str | None]:
    """The URL of a server that lives as long as the context (None: no server binaries here)."""
    bindir = _binaries()
    if bindir is None:
        yield None
        return
    as_postgres: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="atelier-pg-"))
    if os.geteuid() == 0:  # initdb refuses to run as root
        as_postgres = ["runuser", "-u", "postgres", "--"]
        shutil.chown(data, "postgres", "postgres")
    port = _free_port()
    pgdata = data / "data"

    def run(*cmd: str) -> None:
        proc = subprocess.run([*as_postgres, *cmd], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")

    run(str(bindir / "initdb"), "-D", str(pgdata), "-A", "trust", "-U", "atelier", "-E", "UTF8", "--no-sync")
    run(str(bindir / "pg_ctl"), "-D", str(pgdata), "-w", "-l", str(data / "log"), "-o",
        f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", "start")
    try:
        yield f"postgresql://atelier@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)


def with_database(server_url: str, name: str) -> str:
    """`server_url` with its database replaced by `name`."""
    head, _, _ = server_url.rpartition("/")
    return f"{head}/{name}"


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the server for one test; dropped afterwards."""
    import psycopg

    name = f"atelier_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
