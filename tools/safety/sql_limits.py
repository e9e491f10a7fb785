"""`limits` storages on SQL databases, shared by every process that uses the same database.

`limits` has neither a SQLite nor a PostgreSQL storage; these register the schemes `sqlite` and
`postgresql` (`postgres`) with `limits`, so `storage_from_string("sqlite:////data/ratelimits.sqlite")`
or `storage_from_string("postgresql://atelier@db/atelier")` builds one. Both support the moving
window (what `RateLimiter` uses: one row per counted request; checking and counting are one atomic
step across processes: SQLite's `BEGIN IMMEDIATE`, a transaction-scoped advisory lock per key on
Postgres) and the fixed window (a counter per key). The SQL is written once (`_WindowTables`).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from limits.storage import MovingWindowSupport, Storage

from tools.dbfile import check_sqlite_file, connect_postgres, connect_wal, create_postgres_tables, sqlite_errors

BUSY_TIMEOUT_S = 10.0
PRUNE_EVERY_S = 60.0  # expired rows of every key (keys never seen again, rotating addresses) go this often

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS rate_entries (key TEXT NOT NULL, ts {real} NOT NULL, expires_at {real} NOT NULL)",
    "CREATE INDEX IF NOT EXISTS rate_entries_key_ts ON rate_entries (key, ts)",
    "CREATE INDEX IF NOT EXISTS rate_entries_expiry ON rate_entries (expires_at)",
    "CREATE TABLE IF NOT EXISTS rate_counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL, "
    "expires_at {real} NOT NULL)",
)


def sqlite_url(path: str | Path) -> str:
    """The storage URL of a SQLite file for `storage_from_string` / `RateLimiter`."""
    return "sqlite:///" + str(Path(path).resolve())


def _one(cursor) -> tuple | None:
    """The first row of a statement, None for one that returns no rows (psycopg raises there)."""
    return cursor.fetchone() if cursor.description else None


class _WindowTables:
    """The counting, written once in SQL with `?` parameters over `_write()` (one transaction that
    no other writer of the same keys interleaves with) and `_read()` (a cursor-like executor)."""

    _pruned_at = 0.0

    @contextmanager
    def _write(self, keys: list[str]) -> Iterator[Any]:  # pragma: no cover - abstract
        raise NotImplementedError
        yield

    def _read(self, sql: str, params: tuple) -> tuple | None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- moving window ---------------------------------------------------------------------------
    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.acquire_entries([(key, limit, expiry)], amount) is None

    def acquire_entries(self, windows: list[tuple[str, int, int]], amount: int = 1) -> int | None:
        """Count `amount` in every (key, limit, expiry) window, all or none, in one transaction:
        None when counted, else the index of the first window that is full (nothing counted)."""
        now = time.time()
        with self._write([key for key, _, _ in windows]) as db:
            if now - self._pruned_at > PRUNE_EVERY_S:
                db("DELETE FROM rate_entries WHERE expires_at <= ?", (now,))
                db("DELETE FROM rate_counters WHERE expires_at <= ?", (now,))
                self._pruned_at = now
            for i, (key, limit, expiry) in enumerate(windows):
                db("DELETE FROM rate_entries WHERE key = ? AND expires_at <= ?", (key, now))
                (count,) = db("SELECT count(*) FROM rate_entries WHERE key = ? AND ts > ?", (key, now - expiry))
                if amount > limit or count + amount > limit:
                    return i
            for key, _limit, expiry in windows:
                for _ in range(amount):
                    db("INSERT INTO rate_entries (key, ts, expires_at) VALUES (?, ?, ?)", (key, now, now + expiry))
            return None

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """(time of the oldest request in the window, requests in the window)."""
        now = time.time()
        oldest, count = self._read("SELECT min(ts), count(*) FROM rate_entries WHERE key = ? AND ts > ?",
                                   (key, now - expiry))
        return (float(oldest), int(count)) if count else (now, 0)

    # -- fixed window ----------------------------------------------------------------------------
    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        with self._write([key]) as db:
            db("DELETE FROM rate_counters WHERE key = ? AND expires_at <= ?", (key, now))
            (value,) = db("INSERT INTO rate_counters (key, value, expires_at) VALUES (?, ?, ?) ON CONFLICT (key) "
                          "DO UPDATE SET value = rate_counters.value + excluded.value RETURNING value",
                          (key, amount, now + expiry))
            return int(value)

    def get(self, key: str) -> int:
        row = self._read("SELECT value FROM rate_counters WHERE key = ? AND expires_at > ?", (key, time.time()))
        return int(row[0]) if row else 0

    def get_expiry(self, key: str) -> float:
        row = self._read("SELECT expires_at FROM rate_counters WHERE key = ? AND expires_at > ?", (key, time.time()))
        return float(row[0]) if row else time.time()

    # -- housekeeping ----------------------------------------------------------------------------
    def reset(self) -> int | None:
        with self._write([]) as db:
            (n,) = db("SELECT (SELECT count(*) FROM rate_entries) + (SELECT count(*) FROM rate_counters)", ())
            db("DELETE FROM rate_entries", ())
            db("DELETE FROM rate_counters", ())
        return int(n)

    def clear(self, key: str) -> None:
        with self._write([key]) as db:
            db("DELETE FROM rate_entries WHERE key = ?", (key,))
            db("DELETE FROM rate_counters WHERE key = ?", (key,))


class SQLiteStorage(_WindowTables, Storage, MovingWindowSupport):
    """`sqlite:////absolute/path` or `sqlite:///relative/path` (see `sqlite_url`)."""

    STORAGE_SCHEME = ["sqlite"]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options):
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        path = uri.removeprefix("sqlite:///")  # as SQLAlchemy: sqlite:////abs/path, sqlite:///rel/path
        self.path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            check_sqlite_file(path, "rate-limit")
        self._lock = threading.Lock()
        with sqlite_errors(path, "rate-limit"):
            self._db = connect_wal(path, timeout=float(options.get("timeout", BUSY_TIMEOUT_S)),
                                   isolation_level=None, check_same_thread=False)
            for statement in _SCHEMA:
                self._db.execute(statement.format(real="REAL"))

    @property
    def base_exceptions(self):
        return sqlite3.Error

    @contextmanager
    def _write(self, keys: list[str]) -> Iterator[Any]:
        """One IMMEDIATE transaction: no other process writes between our read and our write."""
        with self._lock, sqlite_errors(self.path, "rate-limit"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield lambda sql, params: _one(self._db.execute(sql, params))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, params: tuple) -> tuple | None:
        with self._lock, sqlite_errors(self.path, "rate-limit"):
            return _one(self._db.execute(sql, params))

    def check(self) -> bool:
        try:
            with self._lock:
                self._db.execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PostgresStorage(_WindowTables, Storage, MovingWindowSupport):
    """`postgresql://user:password@host:port/database` (or `postgres://`): the counts in that
    database, shared by every process and machine that uses it. Needs the `postgres` extra."""

    STORAGE_SCHEME = ["postgresql", "postgres"]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options):
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.url = uri
        self._pool = connect_postgres(uri, "rate-limit")
        create_postgres_tables(self._pool, "rate limits", [st.format(real="DOUBLE PRECISION") for st in _SCHEMA])

    @property
    def base_exceptions(self):
        import psycopg

        return psycopg.Error

    @contextmanager
    def _write(self, keys: list[str]) -> Iterator[Any]:
        """One transaction holding an advisory lock per key (taken in sorted order: no deadlock), so
        another process counting the same key waits for this one to commit."""
        with self._pool.connection() as conn, conn.transaction():
            for key in sorted(set(keys)):
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))
            yield lambda sql, params: _one(conn.execute(sql.replace("?", "%s"), params))

    def _read(self, sql: str, params: tuple) -> tuple | None:
        with self._pool.connection() as conn:
            return _one(conn.execute(sql.replace("?", "%s"), params))

    def check(self) -> bool:
        try:
            with self._pool.connection(timeout=5) as conn:
                conn.execute("SELECT 1").fetchone()
            return True
        except Exception:  # noqa: BLE001 - any failure means not reachable
            return False

    def close(self) -> None:
        self._pool.close()
