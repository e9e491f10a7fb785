"""One writer per conversation, across processes: thread leases in the sessions database.

A LangGraph turn reads the thread's latest checkpoint and writes its successors; two turns of one
thread running at once (two servers, a server and the CLI) both start from the same checkpoint
and one of them is silently lost. So a turn first takes the thread's lease, a row of
`atelier_thread_leases(thread_id, holder, expires_at)` in the sessions database itself (SQLite or
Postgres, whatever the checkpointer uses), and gives it back when it ends:

    leases = ThreadLeases(profile.store.sessions_url(), lease_s=30, wait_s=30)
    with leases.hold("alice/t-1"):      # ThreadBusyError after wait_s if another turn holds it
        ...

While a turn runs, a heartbeat thread renews its lease every `lease_s / 3`; the lease of a process
that died is not renewed and expires after `lease_s`, so nobody waits for a crashed writer for
longer than that. The lease uses its own connection (SQLite: WAL, a busy timeout), never the
checkpointer's.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tools.dbfile import (check_sqlite_file, connect_postgres, connect_wal, create_postgres_tables, is_postgres,
                          postgres_where, sqlite_errors, sqlite_path)
from tools.errors import AtelierError, CheckpointError, ThreadBusyError

log = logging.getLogger(__name__)

BUSY_MESSAGE = "this chat is busy with another request; try again when it finishes"
BUSY_TIMEOUT_S = 10.0  # SQLite busy timeout of the lease connection (each statement is tiny)


class ThreadLeases:
    """Leases on threads in the sessions database at `url` (a SQLite path or a postgres:// URL)."""

    def __init__(self, url: str, *, lease_s: float = 30.0, wait_s: float = 30.0, poll_s: float = 0.25):
        self.url = str(url)
        self.lease_s = float(lease_s)
        self.wait_s = float(wait_s)
        self.poll_s = float(poll_s)
        self._lock = threading.Lock()
        self._held: dict[str, str] = {}  # thread id -> holder token, renewed by the heartbeat
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._host = f"{socket.gethostname()}:{os.getpid()}"
        if is_postgres(self.url):
            self._open_postgres()
        else:
            self._open_sqlite()

    # -- connections -------------------------------------------------------------------------
    def _open_sqlite(self) -> None:
        path = sqlite_path(self.url)
        self._what = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            check_sqlite_file(path, "sessions")
        self._p = "?"
        with sqlite_errors(path, "sessions"):
            self._db = connect_wal(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            self._db.execute("CREATE TABLE IF NOT EXISTS atelier_thread_leases "
                             "(thread_id TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at REAL NOT NULL)")

    def _open_postgres(self) -> None:
        self._what = postgres_where(self.url)
        self._p = "%s"
        self._pool = connect_postgres(self.url, "sessions")
        create_postgres_tables(self._pool, "leases", (
            "CREATE TABLE IF NOT EXISTS atelier_thread_leases "
            "(thread_id TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL)",))

    def _execute(self, sql: str, params: tuple = ()) -> tuple[int, list[tuple]]:
        """(rows changed, rows returned) of one statement, under the connection's lock."""
        with self._lock:
            if self._p == "%s":
                try:
                    with self._pool.connection() as conn:
                        cur = conn.execute(sql.replace("?", "%s"), params)
                        return cur.rowcount, (cur.fetchall() if cur.description else [])
                except Exception as err:  # noqa: BLE001 - psycopg / pool errors: a lost server, a read-only database
                    raise CheckpointError(f"the sessions database {self._what} cannot be written ({err}); nothing "
                                          "was run — send the message again when it is back") from None
            try:
                with sqlite_errors(self._what, "sessions"):
                    cur = self._db.execute(sql, params)
                    return cur.rowcount, cur.fetchall()
            except sqlite3.Error as err:  # read-only file, full disk, locked past the busy timeout
                raise CheckpointError(f"the sessions database {self._what} cannot be written ({err}); nothing was "
                                      "run — make it writable and send the message again") from None

    # -- leases ------------------------------------------------------------------------------
    def try_acquire(self, thread_id: str, holder: str) -> bool:
        """Take the lease when it is free, expired or already `holder`'s (one atomic upsert)."""
        now = time.time()
        self._execute(
            "INSERT INTO atelier_thread_leases (thread_id, holder, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (thread_id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at "
            "WHERE atelier_thread_leases.expires_at < ? OR atelier_thread_leases.holder = excluded.holder",
            (thread_id, holder, now + self.lease_s, now))
        _, rows = self._execute("SELECT holder FROM atelier_thread_leases WHERE thread_id = ?", (thread_id,))
        return bool(rows) and rows[0][0] == holder

    def acquire(self, thread_id: str, wait_s: float | None = None) -> str:
        """Wait up to `wait_s` (default: the profile's) for the thread's lease; its holder token.
        ThreadBusyError when another turn still holds it after the wait."""
        wait = self.wait_s if wait_s is None else float(wait_s)
        holder = f"{self._host}:{uuid.uuid4().hex[:12]}"
        deadline = time.monotonic() + wait
        delay = 0.02
        while not self.try_acquire(thread_id, holder):
            left = deadline - time.monotonic()
            if left <= 0:
                raise ThreadBusyError(BUSY_MESSAGE)
            time.sleep(min(delay, left))
            delay = min(delay * 1.5, self.poll_s)
        with self._lock:
            self._held[thread_id] = holder
        self._ensure_heartbeat()
        return holder

    def release(self, thread_id: str, holder: str) -> None:
        with self._lock:
            if self._held.get(thread_id) == holder:
                del self._held[thread_id]
        try:
            self._execute("DELETE FROM atelier_thread_leases WHERE thread_id = ? AND holder = ?", (thread_id, holder))
        except Exception:  # noqa: BLE001 - an unreleased lease expires on its own
            log.warning("could not release the lease of thread %s; it expires in %.0f s", thread_id, self.lease_s,
                        exc_info=True)

    @contextmanager
    def hold(self, thread_id: str, wait_s: float | None = None) -> Iterator[str]:
        holder = self.acquire(thread_id, wait_s)
        try:
            yield holder
        finally:
            self.release(thread_id, holder)

    def holder(self, thread_id: str) -> str | None:
        """Who holds the thread's unexpired lease (None: nobody)."""
        _, rows = self._execute("SELECT holder, expires_at FROM atelier_thread_leases WHERE thread_id = ?",
                                (thread_id,))
        return rows[0][0] if rows and rows[0][1] >= time.time() else None

    # -- heartbeat ---------------------------------------------------------------------------
    def _ensure_heartbeat(self) -> None:
        with self._lock:
            if self._heartbeat is not None and self._heartbeat.is_alive():
                return
            self._heartbeat = threading.Thread(target=self._beat, name="atelier-thread-leases", daemon=True)
            self._heartbeat.start()

    def renew(self) -> None:
        """Push back the expiry of every lease this process holds."""
        with self._lock:
            held = list(self._held.items())
        for thread_id, holder in held:
            changed, _ = self._execute(
                "UPDATE atelier_thread_leases SET expires_at = ? WHERE thread_id = ? AND holder = ?",
                (time.time() + self.lease_s, thread_id, holder))
            if changed == 0:
                log.warning("the lease of thread %s was lost (not renewed for %.0f s)", thread_id, self.lease_s)

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.renew()
            except Exception:  # noqa: BLE001 - try again at the next beat
                log.warning("could not renew thread leases", exc_info=True)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            held = list(self._held.items())
        for thread_id, holder in held:
            self.release(thread_id, holder)
        with self._lock:
            (self._pool if self._p == "%s" else self._db).close()
