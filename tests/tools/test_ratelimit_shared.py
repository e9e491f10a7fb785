"""Rate limits shared by every process on one data root (a SQLite `limits` storage) or one
PostgreSQL database (`store.url`)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from tools.errors import RateLimitedError
from tools.safety import RateLimiter
from tools.safety.sql_limits import PostgresStorage, SQLiteStorage, sqlite_url

REPO = Path(__file__).resolve().parents[2]


def test_two_limiters_on_one_database_share_one_quota(database):
    path = database("ratelimits")
    a, b = RateLimiter("3/minute;5/day", str(path)), RateLimiter("3/minute;5/day", str(path))
    a.hit("alice")
    b.hit("alice")
    a.hit("alice")
    with pytest.raises(RateLimitedError) as err:
        b.hit("alice")
    assert "3 per minute" in str(err.value) and 55 < err.value.retry_after <= 60
    assert a.remaining("alice") == b.remaining("alice") == 0
    b.hit("bob")  # another key has its own quota
    assert a.remaining("bob") == 2
    a.close()
    b.close()


def test_refused_hits_are_not_counted_in_any_window(database):
    limiter = RateLimiter("10/minute;2/day", database("r"))
    limiter.hit("carol")
    limiter.hit("carol")
    for _ in range(5):
        with pytest.raises(RateLimitedError, match="2 per day"):
            limiter.hit("carol")
    # the minute window counted only the two accepted requests
    minute = limiter.limiter.get_window_stats(limiter.limits[0], limiter.namespace, "carol")
    assert minute.remaining == 8


def test_memory_storage_is_still_per_instance():
    a, b = RateLimiter("1/minute"), RateLimiter("1/minute")
    a.hit("dan")
    b.hit("dan")  # separate memory: not shared
    with pytest.raises(RateLimitedError):
        a.hit("dan")


def test_the_storage_speaks_the_limits_api(database):
    url = database("l")
    postgres = url.startswith("postgresql://")
    storage = storage_from_string(url if postgres else sqlite_url(url))
    assert isinstance(storage, PostgresStorage if postgres else SQLiteStorage) and storage.check()
    moving, fixed = MovingWindowRateLimiter(storage), FixedWindowRateLimiter(storage)
    two = parse("2/second")
    assert moving.hit(two, "k") and moving.hit(two, "k") and not moving.hit(two, "k")
    assert moving.get_window_stats(two, "k").remaining == 0
    time.sleep(1.1)
    assert moving.hit(two, "k")  # the window moved on
    assert fixed.hit(two, "f") and fixed.hit(two, "f") and not fixed.hit(two, "f")
    assert storage.get(two.key_for("f")) == 3  # as in every limits storage: the refused hit is counted too
    storage.clear(two.key_for("f"))
    assert fixed.hit(two, "f")
    assert storage.reset() >= 1
    assert moving.get_window_stats(two, "k").remaining == 2


HITTER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from tools.errors import RateLimitedError
    from tools.safety import RateLimiter
    path, go, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    limiter = RateLimiter("10/minute", path)
    while not Path(go).exists():
        time.sleep(0.002)
    ok = 0
    for _ in range(n):
        try:
            limiter.hit("shared-user")
            ok += 1
        except RateLimitedError:
            pass
    print(json.dumps({"ok": ok}))
""")


def test_two_processes_share_one_quota(tmp_path, database):
    path, go = database("ratelimits"), tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", HITTER, str(path), str(go), "10"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(1.5)  # both imported and waiting
    go.touch()
    accepted = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        accepted.append(json.loads(out.strip().splitlines()[-1])["ok"])
    assert sum(accepted) == 10, accepted  # one quota of 10 for both processes, not 10 each


def test_the_agent_shares_the_quota_of_a_data_root_and_counts_per_rate_key(tmp_path):
    from agent import Atelier

    overrides = {"store": {"root": str(tmp_path)}, "limits": {"per_user": "2/minute"}}
    first, second = Atelier("tiny", overrides), Atelier("tiny", overrides)  # two "processes" on one root
    assert first.limiter.storage.path == second.limiter.storage.path == str(tmp_path / "ratelimits.sqlite")
    first.limiter.hit(first.session("t1", user_id="eve").rate_key)
    second.limiter.hit(second.session("t2", user_id="eve").rate_key)
    with pytest.raises(RateLimitedError):
        first.session("t3", user_id="eve").send("/generate a bee")
    # the same user through another rate key (e.g. another client address) has its own quota
    other = second.session("t4", user_id="eve", rate_key="addr:10.0.0.7")
    assert other.rate_key == "addr:10.0.0.7"
    second.limiter.hit(other.rate_key)
    # a limits storage URL still works: memory:// is per process again
    alone = Atelier("tiny", {**overrides, "limits": {"per_user": "2/minute", "storage": "memory://"}})
    alone.limiter.hit("eve")
    alone.limiter.hit("eve")
    for app in (first, second, alone):
        app.close()
