"""The audit log: one record per request, decision, tool call and produced image.

SQLite by default (a path, or `sqlite:///path`); PostgreSQL with a `postgresql://` URL (needs the
`postgres` extra), which every process and machine of a deployment writes to. `report()`
summarises usage and flags bulk patterns: bursts of requests and many near-duplicate prompts from
one user.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from rapidfuzz import fuzz

from tools.dbfile import (check_sqlite_file, connect_postgres, connect_wal, create_postgres_tables, is_postgres,
                          sqlite_errors)

EVENTS = ("request", "decision", "tool_call", "image", "consent", "error", "rate_limited")

# Bulk-pattern thresholds (per user).
BURST_WINDOW_S = 60.0
BURST_REQUESTS = 20  # more requests than this inside one window is a burst
NEAR_DUPLICATE_RATIO = 90  # rapidfuzz token_set_ratio
NEAR_DUPLICATE_COUNT = 5  # this many near-identical prompts is a bulk pattern
REPEATED_REFUSALS = 3


class AuditLog:
    def __init__(self, url: str | Path):
        url = str(url)
        self.url = url
        self._lock = threading.Lock()
        if is_postgres(url):
            self._db = connect_postgres(url, "audit")  # a pool: `_run` takes a connection per statement
            self._param = "%s"
            create_postgres_tables(self._db, "audit", (
                "CREATE TABLE IF NOT EXISTS audit (id BIGSERIAL PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, "
                "event TEXT NOT NULL, user_id TEXT NOT NULL, thread_id TEXT, data TEXT NOT NULL)",
                "CREATE INDEX IF NOT EXISTS audit_user_ts ON audit (user_id, ts)",
            ))
        else:
            path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                check_sqlite_file(path, "audit")  # garbage or corrupt: one line naming the file, untouched
            with sqlite_errors(path, "audit"):
                self._db = connect_wal(path, check_same_thread=False, isolation_level=None)
                self._param = "?"
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, "
                    "event TEXT NOT NULL, user_id TEXT NOT NULL, thread_id TEXT, data TEXT NOT NULL)"
                )
                self._db.execute("CREATE INDEX IF NOT EXISTS audit_user_ts ON audit (user_id, ts)")

    def _run(self, sql: str, params=()) -> list[tuple]:
        """One statement; its rows ([] for a statement that returns none)."""
        if self._param == "%s":
            with self._db.connection() as conn:
                cur = conn.execute(sql, params)
                return cur.fetchall() if cur.description else []
        cur = self._db.execute(sql, params)
        return cur.fetchall() if cur.description else []

    def record(self, event: str, *, user_id: str, thread_id: str | None = None, **data: Any) -> None:
        """Append one record; `data` is stored as JSON (prompts, decisions, tool args, refs)."""
        p = self._param
        ts = data.pop("ts", None) or time.time()
        with self._lock:
            self._run(
                f"INSERT INTO audit (ts, event, user_id, thread_id, data) VALUES ({p}, {p}, {p}, {p}, {p})",
                (ts, event, user_id, thread_id, json.dumps(data, default=str, ensure_ascii=False)),
            )

    def events(self, *, user_id: str | None = None, thread_id: str | None = None, event: str | None = None,
               since: float | None = None) -> list[dict[str, Any]]:
        p = self._param
        where, params = [], []
        for column, value in (("user_id", user_id), ("thread_id", thread_id), ("event", event)):
            if value is not None:
                where.append(f"{column} = {p}")
                params.append(value)
        if since is not None:
            where.append(f"ts >= {p}")
            params.append(since)
        sql = "SELECT id, ts, event, user_id, thread_id, data FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock:
            rows = self._run(sql + " ORDER BY ts, id", params)
        return [
            {"id": r[0], "ts": r[1], "event": r[2], "user_id": r[3], "thread_id": r[4], **json.loads(r[5])}
            for r in rows
        ]

    # -- report --------------------------------------------------------------------------------
    def flags(self, since: float | None = None) -> list[dict[str, Any]]:
        """Bulk patterns per user: bursts, many near-duplicate prompts, repeated refusals."""
        rows = self.events(since=since)
        by_user: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            by_user[r["user_id"]].append(r)
        out = []
        for user, events in by_user.items():
            times = [e["ts"] for e in events if e["event"] == "request"]
            start, peak = 0, 0
            for end in range(len(times)):
                while times[end] - times[start] > BURST_WINDOW_S:
                    start += 1
                peak = max(peak, end - start + 1)
            if peak > BURST_REQUESTS:
                out.append({"user_id": user, "flag": "burst",
                            "detail": f"{peak} requests within {BURST_WINDOW_S:.0f} s"})
            prompts = [str(e.get("text", "")) for e in events if e["event"] == "request" and e.get("text")]
            biggest = _largest_near_duplicate_group(prompts)
            if biggest >= NEAR_DUPLICATE_COUNT:
                out.append({"user_id": user, "flag": "near_duplicates",
                            "detail": f"{biggest} near-identical prompts"})
            refusals = [d for d in map(_decision_of, events) if d and d.get("decision") == "refuse"]
            if len(refusals) >= REPEATED_REFUSALS:
                cats = Counter(e.get("category") for e in refusals)
                out.append({"user_id": user, "flag": "repeated_refusals",
                            "detail": f"{len(refusals)} refusals ({', '.join(f'{k} {v}' for k, v in cats.most_common())})"})
        return out

    def report(self, since: float | None = None) -> dict[str, Any]:
        rows = self.events(since=since)
        decisions = [d for d in map(_decision_of, rows) if d]
        return {
            "records": len(rows),
            "users": len({r["user_id"] for r in rows}),
            "threads": len({r["thread_id"] for r in rows if r["thread_id"]}),
            "events": dict(Counter(r["event"] for r in rows)),
            "decisions": dict(Counter(r.get("decision", "?") for r in decisions)),
            "refusals_by_category": dict(Counter(r.get("category") for r in decisions if r.get("decision") == "refuse")),
            "tools": dict(Counter(r.get("name") or (r.get("call") or {}).get("name") for r in rows if r["event"] == "tool_call")),
            "images": sum(1 for r in rows if r["event"] == "image"),
            "per_user": {u: dict(Counter(r["event"] for r in rows if r["user_id"] == u))
                         for u in sorted({r["user_id"] for r in rows})},
            "flags": self.flags(since=since),
        }

    def close(self) -> None:
        self._db.close()


def _decision_of(row: dict) -> dict | None:
    """The screening decision a record carries: a `decision` event, or a `decision` field
    (request, upload_screen, tool_call and result_screen records of the agent)."""
    if row["event"] == "decision":
        return row
    nested = row.get("decision")
    return nested if isinstance(nested, dict) else None


def _largest_near_duplicate_group(prompts: list[str]) -> int:
    """Size of the largest group of prompts that are near-duplicates of one prompt (greedy)."""
    prompts = prompts[-500:]
    best = 0
    for i, a in enumerate(prompts):
        n = sum(1 for b in prompts if fuzz.token_set_ratio(a, b) >= NEAR_DUPLICATE_RATIO)
        best = max(best, n)
        if best >= len(prompts) - i:
            break
    return best
