"""A `limits` storage on SQLite, shared by every process on one data root.

`limits` has no SQLite storage; this one registers the scheme `sqlite` with `limits`, so
`storage_from_string("sqlite:////data/ratelimits.sqlite")` builds it. It supports the moving window
(what `RateLimiter` uses: one row per counted request, `BEGIN IMMEDIATE` so that counting and
checking are one atomic step across processes) and the fixed window (a counter per key).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from limits.storage import MovingWindowSupport, Storage

from tools.dbfile import check_sqlite_file, connect_wal, sqlite_errors

BUSY_TIMEOUT_S = 10.0
PRUNE_EVERY_S = 60.0  # expired rows of every key (keys never seen again, rotating addresses) go this often

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS rate_entries (key TEXT NOT NULL, ts REAL NOT NULL, expires_at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS rate_entries_key_ts ON rate_entries (key, ts)",
    "CREATE INDEX IF NOT EXISTS rate_entries_expiry ON rate_entries (expires_at)",
    "CREATE TABLE IF NOT EXISTS rate_counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL, "
    "expires_at REAL NOT NULL)",
)


def sqlite_url(path: str | Path) -> str:
    """The storage URL of a SQLite file for `storage_from_string` / `RateLimiter`."""
    return "sqlite:///" + str(Path(path).resolve())


class SQLiteStorage(Storage, MovingWindowSupport):
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
        self._pruned_at = 0.0
        with sqlite_errors(path, "rate-limit"):
            self._db = connect_wal(path, timeout=float(options.get("timeout", BUSY_TIMEOUT_S)),
                                   isolation_level=None, check_same_thread=False)
            for statement in _SCHEMA:
                self._db.execute(statement)

    @property
    def base_exceptions(self):
        return sqlite3.Error

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: no other process writes between our read and our write."""
        with self._lock, sqlite_errors(self.path, "rate-limit"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- moving window ---------------------------------------------------------------------------
    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.acquire_entries([(key, limit, expiry)], amount) is None

    def acquire_entries(self, windows: list[tuple[str, int, int]], amount: int = 1) -> int | None:
        """Count `amount` in every (key, limit, expiry) window, all or none, in one transaction:
        None when counted, else the index of the first window that is full (nothing counted)."""
        now = time.time()
        with self._write() as db:
            if now - self._pruned_at > PRUNE_EVERY_S:
                db.execute("DELETE FROM rate_entries WHERE expires_at <= ?", (now,))
                db.execute("DELETE FROM rate_counters WHERE expires_at <= ?", (now,))
                self._pruned_at = now
            for i, (key, limit, expiry) in enumerate(windows):
                db.execute("DELETE FROM rate_entries WHERE key = ? AND expires_at <= ?", (key, now))
                (count,) = db.execute("SELECT count(*) FROM rate_entries WHERE key = ? AND ts > ?",
                                      (key, now - expiry)).fetchone()
                if amount > limit or count + amount > limit:
                    return i
            for key, _limit, expiry in windows:
                db.executemany("INSERT INTO rate_entries (key, ts, expires_at) VALUES (?, ?, ?)",
                               [(key, now, now + expiry)] * amount)
            return None

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """(time of the oldest request in the window, requests in the window)."""
        now = time.time()
        with self._lock, sqlite_errors(self.path, "rate-limit"):
            oldest, count = self._db.execute(
                "SELECT min(ts), count(*) FROM rate_entries WHERE key = ? AND ts > ?", (key, now - expiry)).fetchone()
        return (oldest, count) if count else (now, 0)

    # -- fixed window ----------------------------------------------------------------------------
    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        with self._write() as db:
            db.execute("DELETE FROM rate_counters WHERE key = ? AND expires_at <= ?", (key, now))
            db.execute("INSERT INTO rate_counters (key, value, expires_at) VALUES (?, ?, ?) "
                       "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value", (key, amount, now + expiry))
            (value,) = db.execute("SELECT value FROM rate_counters WHERE key = ?", (key,)).fetchone()
            return int(value)

    def get(self, key: str) -> int:
        with self._lock, sqlite_errors(self.path, "rate-limit"):
            row = self._db.execute("SELECT value FROM rate_counters WHERE key = ? AND expires_at > ?",
                                   (key, time.time())).fetchone()
        return int(row[0]) if row else 0

    def get_expiry(self, key: str) -> float:
        with self._lock, sqlite_errors(self.path, "rate-limit"):
            row = self._db.execute("SELECT expires_at FROM rate_counters WHERE key = ? AND expires_at > ?",
                                   (key, time.time())).fetchone()
        return float(row[0]) if row else time.time()

    # -- housekeeping ----------------------------------------------------------------------------
    def check(self) -> bool:
        try:
            with self._lock:
                self._db.execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False

    def reset(self) -> int | None:
        with self._write() as db:
            n = db.execute("SELECT (SELECT count(*) FROM rate_entries) + (SELECT count(*) FROM rate_counters)").fetchone()[0]
            db.execute("DELETE FROM rate_entries")
            db.execute("DELETE FROM rate_counters")
        return int(n)

    def clear(self, key: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM rate_entries WHERE key = ?", (key,))
            db.execute("DELETE FROM rate_counters WHERE key = ?", (key,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
