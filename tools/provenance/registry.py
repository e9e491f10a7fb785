"""Registry of issued watermark ids (SQLite under the data root)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import numpy as np

from tools.dbfile import check_sqlite_file, sqlite_errors


class WatermarkRegistry:
    """Every watermark id Atelier has embedded, with what it was put on."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            check_sqlite_file(self.path, "watermark registry")  # garbage: one line naming the file, untouched
        self._lock = threading.Lock()
        with sqlite_errors(self.path, "watermark registry"):
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS watermarks (id TEXT PRIMARY KEY, value INTEGER NOT NULL, "
                "created_at REAL NOT NULL, action TEXT, sha256 TEXT, parent_sha256 TEXT)"
            )
            self._db.commit()
        self._cache: np.ndarray | None = None

    def add(self, wm_id: str, *, action: str = "", sha256: str | None = None, parent_sha256: str | None = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO watermarks VALUES (?, ?, ?, ?, ?, ?)",
                (wm_id, int(wm_id, 16), time.time(), action, sha256, parent_sha256),
            )
            self._db.commit()
            self._cache = None

    def __contains__(self, wm_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM watermarks WHERE id = ?", (wm_id,)).fetchone() is not None

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM watermarks").fetchone()[0])

    def values(self) -> np.ndarray:
        if self._cache is None:
            rows = self._db.execute("SELECT value FROM watermarks").fetchall()
            self._cache = np.array([r[0] for r in rows], dtype=np.uint64)
        return self._cache

    def get(self, wm_id: str) -> dict | None:
        row = self._db.execute(
            "SELECT id, created_at, action, sha256, parent_sha256 FROM watermarks WHERE id = ?", (wm_id,)
        ).fetchone()
        if row is None:
            return None
        return dict(zip(("id", "created_at", "action", "sha256", "parent_sha256"), row))

    def nearest(self, bits_value: int) -> tuple[str | None, int]:
        """The registered id closest to a decoded 48-bit value, and its bit agreement (0-48)."""
        values = self.values()
        if values.size == 0:
            return None, 0
        x = np.bitwise_xor(values, np.uint64(bits_value))
        dist = np.array([int(v).bit_count() for v in x]) if x.size < 64 else _popcount(x)
        i = int(np.argmin(dist))
        return f"{int(values[i]):012x}", 48 - int(dist[i])

    def close(self) -> None:
        self._db.close()


def _popcount(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    count = np.zeros(x.shape, dtype=np.int64)
    for shift in range(0, 48, 8):
        count += _BYTE_POP[((x >> np.uint64(shift)) & np.uint64(0xFF)).astype(np.int64)]
    return count


_BYTE_POP = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
