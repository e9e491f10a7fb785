"""SQLite files of the data root (sessions, audit log, rate limits): one clear line when one is not
a database, and never a write to a file that SQLite cannot read.

    check_sqlite_file(path, "sessions")      # DatabaseFileError when `path` is garbage or corrupt
    with sqlite_errors(path, "audit"): ...    # the same for corruption found later, on first use
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tools.errors import DatabaseFileError

# SQLite's own names for "this is not (or no longer) a readable database"
_CORRUPT_CODES = {"SQLITE_NOTADB", "SQLITE_CORRUPT", "SQLITE_CORRUPT_VTAB", "SQLITE_CORRUPT_SEQUENCE",
                  "SQLITE_CORRUPT_INDEX"}
_CORRUPT_TEXTS = ("file is not a database", "database disk image is malformed", "malformed database schema")


def sqlite_path(url: str | Path) -> str:
    """The file of a SQLite URL (`sqlite:///path`) or a plain path."""
    return str(url).removeprefix("sqlite:///")


def is_corruption(err: BaseException) -> bool:
    """True for SQLite's "not a database" and "malformed" errors (not for locked, busy, read-only)."""
    if not isinstance(err, sqlite3.DatabaseError):
        return False
    name = getattr(err, "sqlite_errorname", None) or ""
    return name in _CORRUPT_CODES or any(text in str(err) for text in _CORRUPT_TEXTS)


def unreadable(path: str | Path, what: str, reason: str) -> DatabaseFileError:
    return DatabaseFileError(
        f"{path} is not a readable Atelier {what} database ({reason}); move it aside or restore a backup "
        "— nothing was changed")


def check_sqlite_file(path: str | Path, what: str) -> None:
    """Raise DatabaseFileError when `path` exists and SQLite cannot read it as a database.

    Opens the file read-only (nothing is ever written, not even a journal) and reads the schema.
    A missing or empty file passes (SQLite creates the database); so do errors that are not about
    the file's contents (locked, no permission), which the caller's own open reports as usual."""
    if str(path) == ":memory:" or str(path).startswith("file:"):
        return
    p = Path(path)
    try:
        if p.is_dir():
            raise unreadable(p, what, "it is a directory")
        if not p.is_file() or p.stat().st_size == 0:
            return
    except OSError:
        return
    try:
        conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as err:
        if is_corruption(err):
            raise unreadable(p, what, str(err)) from None
    finally:
        conn.close()


@contextmanager
def sqlite_errors(path: str | Path, what: str) -> Iterator[None]:
    """Corruption found while using a database becomes the one-line DatabaseFileError."""
    try:
        yield
    except sqlite3.DatabaseError as err:
        if is_corruption(err):
            raise unreadable(path, what, str(err)) from None
        raise


def connect_wal(path: str | Path, *, timeout: float = 10.0, **kwargs) -> sqlite3.Connection:
    """A connection in WAL mode. Switching a new file to WAL needs the file to itself, and
    SQLite's busy handler does not wait for that, so two processes that start on a fresh data root
    at once would see "database is locked": the switch is retried until `timeout`."""
    import time

    db = sqlite3.connect(str(path), timeout=timeout, **kwargs)
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return db
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) and "busy" not in str(err) or time.monotonic() > deadline:
                db.close()
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


# -- PostgreSQL (the scale-out option: `store.url: postgresql://...`) ------------------------------
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
POSTGRES_EXTRA = "pip install 'qwen-atelier[postgres]'"


def is_postgres(url: str | Path | None) -> bool:
    return str(url or "").startswith(POSTGRES_SCHEMES)


def postgres_where(url: str) -> str:
    """A Postgres URL without its password or query, for messages and logs."""
    from urllib.parse import urlsplit

    parts = urlsplit(str(url))
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return parts._replace(netloc=netloc, query="").geturl()


def connect_postgres(url: str, what: str, *, max_size: int = 4, **kwargs):
    """A pool of psycopg connections (autocommit) to the database at `url`, for the `what` store:
    `with pool.connection() as conn: ...`. Each connection is checked when it is taken, so a
    server restart or a dropped connection costs one reconnect, not every later request.

    Without the `postgres` extra, or when the server cannot be reached, one line that says so
    (DatabaseFileError, the same error a broken SQLite file gives), never the driver's traceback."""
    try:
        import psycopg
        from psycopg_pool import ConnectionPool
    except ImportError:
        raise DatabaseFileError(f"a Postgres {what} database needs the postgres extra: {POSTGRES_EXTRA}") from None
    kwargs.setdefault("autocommit", True)
    try:  # one direct attempt first: a wrong host or password is one line now, not a pool retrying
        psycopg.connect(str(url), connect_timeout=10, **kwargs).close()
    except psycopg.Error as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise DatabaseFileError(
            f"cannot open the Atelier {what} database {postgres_where(url)} ({reason}); "
            "check store.url and that the server is running — nothing was changed") from None
    return ConnectionPool(str(url), min_size=1, max_size=max_size, open=True, kwargs=kwargs,
                          check=ConnectionPool.check_connection, name=f"atelier-{what}")


def create_postgres_tables(pool, what: str, statements: list[str] | tuple[str, ...]) -> None:
    """Run a store's `CREATE ... IF NOT EXISTS` statements in one transaction under an advisory lock
    named for the store, so processes that start at once do not collide on Postgres's catalog
    (`IF NOT EXISTS` alone races: a UniqueViolation on pg_type)."""
    with pool.connection() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"atelier {what} schema",))
        for statement in statements:
            conn.execute(statement)
