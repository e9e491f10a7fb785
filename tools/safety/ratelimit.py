"""Per-user rate limits with the `limits` library (moving window).

The agent keeps the counts in `<data root>/ratelimits.sqlite`, or in the Postgres database of
`store.url` (`tools.safety.sql_limits`), so every process on one data root or one database (servers,
the chat app, the CLI, several machines) shares one quota per key.
"""

from __future__ import annotations

import math
import time

from limits import parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from tools.errors import RateLimitedError
from tools.safety.sql_limits import _WindowTables, sqlite_url


class RateLimiter:
    """`RateLimiter("30/minute;500/day").hit(user_id)` raises RateLimitedError when over a limit.

    `storage_url`: None keeps the counts in this process's memory; a SQLite file (a path or
    `sqlite:///path`) shares them with every process that uses the same file; any other `limits`
    `postgresql://...` URL or any other `limits` storage URL (`redis://...`, `memcached://...`)
    shares them across machines.
    """

    def __init__(self, spec: str, storage_url: str | None = None, *, namespace: str = "atelier"):
        self.spec = spec
        self.limits = parse_many(spec) if spec and spec.strip() else []
        url = storage_url or "memory://"
        if "://" not in url:  # a plain path: a SQLite file
            url = sqlite_url(url)
        self.storage = storage_from_string(url)
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.namespace = namespace

    def hit(self, user_id: str) -> None:
        """Count one request of `user_id`, or raise RateLimitedError without counting it."""
        if isinstance(self.storage, _WindowTables):  # every limit checked and counted in one transaction
            full = self.storage.acquire_entries(
                [(limit.key_for(self.namespace, user_id), limit.amount, limit.get_expiry()) for limit in self.limits])
            if full is not None:
                self._refuse(user_id, self.limits[full])
            return
        for limit in self.limits:
            if not self.limiter.test(limit, self.namespace, user_id):
                self._refuse(user_id, limit)
        for limit in self.limits:
            if not self.limiter.hit(limit, self.namespace, user_id):  # another client took the last one
                self._refuse(user_id, limit)

    def _refuse(self, user_id: str, limit) -> None:
        retry = self.retry_after(user_id, limit)
        raise RateLimitedError(
            f"too many requests: the limit is {_describe(limit)}; try again in {_human(retry)}",
            retry_after=retry,
        )

    def retry_after(self, user_id: str, limit=None) -> float:
        limits = [limit] if limit is not None else self.limits
        waits = []
        for lim in limits:
            stats = self.limiter.get_window_stats(lim, self.namespace, user_id)
            if stats.remaining <= 0:
                waits.append(max(0.0, stats.reset_time - time.time()))
        return round(max(waits), 1) if waits else 0.0

    def remaining(self, user_id: str) -> int:
        return min((self.limiter.get_window_stats(l, self.namespace, user_id).remaining for l in self.limits), default=0)

    def reset(self) -> None:
        self.storage.reset()

    def close(self) -> None:
        if isinstance(self.storage, _WindowTables):
            self.storage.close()


def _describe(limit) -> str:
    item = limit.GRANULARITY.name
    return f"{limit.amount} per {'' if limit.multiples == 1 else str(limit.multiples) + ' '}{item}{'' if limit.multiples == 1 else 's'}"


def _human(seconds: float) -> str:
    s = max(1, math.ceil(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{math.ceil(s / 60)} min"
    return f"{s / 3600:.1f} h"
