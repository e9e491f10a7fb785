"""One writer per thread across processes: a lease in the sessions database, not a process lock.

Two OS processes sending turns to one thread keep every turn; a writer that finds the thread busy
waits `limits.thread_busy_wait_s` and then gets ThreadBusyError; a crashed holder's lease expires.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from agent_helpers import tiny_overrides
from PIL import Image

from agent import Atelier
from agent.leases import BUSY_MESSAGE, ThreadLeases
from tools.errors import AtelierError, ThreadBusyError

USER = "ana"
THREAD = "shared"

# A child process: build the app, say it is ready, wait for "go", then send TURNS slash commands
# to the one thread (each `/adjust` writes its checkpoints; no planner, no image engine).
CHILD = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from agent import Atelier
    root, name, turns = sys.argv[1], sys.argv[2], int(sys.argv[3])
    overrides = json.loads(sys.argv[4])
    app = Atelier(profile="tiny", overrides=overrides)
    session = app.session("%s", user_id="%s")
    session.messages()  # open the graph and the sessions database before the start
    Path(root, "ready-" + name).touch()
    while not Path(root, "go").exists():
        time.sleep(0.005)
    start = time.monotonic()
    failed = []
    for i in range(turns):
        result = session.send(f"/adjust exposure={'+' if i %% 2 == 0 else '-'}0.{i + 1}")
        if result.error:
            failed.append(result.error.model_dump())  # TurnError (pydantic): JSON for the report
    print(json.dumps({"name": name, "seconds": time.monotonic() - start, "failed": failed}))
    app.close()
""" % (THREAD, USER))


def _png(seed: int = 1) -> bytes:
    image = Image.effect_noise((64, 64), 40 + seed).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _user_turns(session) -> int:
    return sum(1 for m in session.messages() if m["role"] == "user")


def test_two_processes_on_one_thread_keep_every_turn(tmp_path, database):
    overrides = tiny_overrides(tmp_path)
    if database("sessions").startswith("postgresql://"):  # sessions, leases, audit, limits in Postgres
        overrides["store"]["url"] = database("sessions")
    app = Atelier("tiny", overrides)
    seeded = app.session(THREAD, user_id=USER).send("/adjust exposure=+0.5", images=[_png()])
    assert seeded.error is None and seeded.images
    app.close()

    turns = 6
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), name, str(turns), json.dumps(overrides)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
             for name in ("p1", "p2")]
    deadline = time.monotonic() + 240
    while not all((tmp_path / f"ready-{n}").exists() for n in ("p1", "p2")):
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
        assert time.monotonic() < deadline, "the child processes did not start"
        time.sleep(0.05)
    started = time.monotonic()
    (tmp_path / "go").touch()
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.monotonic() - started
    assert all(r["failed"] == [] for r in reports), reports

    app = Atelier("tiny", overrides)
    session = app.session(THREAD, user_id=USER)
    kept = _user_turns(session) - 1  # the seed turn
    each = ", ".join("%s %.1f s" % (r["name"], r["seconds"]) for r in reports)
    print(f"\n2 processes x {turns} turns on one thread: {kept} of {2 * turns} turns kept, wall {wall:.1f} s ({each})")
    assert kept == 2 * turns
    # every turn's image is in the thread's history, a chain of versions
    assert len(session.history()) == 1 + 1 + 2 * turns  # upload, seed result, 12 adjustments
    assert app.leases.holder(session.key) is None  # every lease given back
    app.close()


def test_a_busy_thread_waits_then_says_busy_in_one_line(make_app, tmp_path):
    app = make_app(limits={"thread_busy_wait_s": 0.6})
    session = app.session("t-busy", user_id=USER)
    assert session.send("/adjust exposure=+1", images=[_png(2)]).images
    turns = _user_turns(session)

    # another process holds the lease (its own connection to the same sessions database)
    other = ThreadLeases(app.profile.store.sessions_url(), lease_s=30, wait_s=0)
    holder = other.acquire(session.key)
    try:
        started = time.monotonic()
        with pytest.raises(ThreadBusyError) as err:
            session.send("/adjust exposure=-0.5")
        waited = time.monotonic() - started
        assert 0.6 <= waited < 5
        assert str(err.value) == BUSY_MESSAGE and "\n" not in str(err.value)
        assert err.value.code == "thread_busy" and err.value.http_status == 409
        assert isinstance(err.value, AtelierError)
        assert _user_turns(session) == turns  # nothing of the refused turn was written
    finally:
        other.release(session.key, holder)
        other.close()
    # free again: the turn goes through
    assert session.send("/adjust exposure=-0.5").error is None
    assert _user_turns(session) == turns + 1


def test_a_second_writer_waits_for_the_first_to_finish(make_app):
    """Within the wait, the second turn runs after the first instead of failing."""
    app = make_app(limits={"thread_busy_wait_s": 20})
    session = app.session("t-wait", user_id=USER)
    assert session.send("/adjust exposure=+1", images=[_png(3)]).images
    other = ThreadLeases(app.profile.store.sessions_url(), lease_s=30, wait_s=0)
    holder = other.acquire(session.key)
    threading.Timer(1.0, other.release, args=(session.key, holder)).start()
    started = time.monotonic()
    result = session.send("/adjust exposure=-0.5")
    assert result.error is None and result.images
    assert time.monotonic() - started >= 0.9
    other.close()


def test_a_crashed_holders_lease_expires(database):
    url = database("sessions")
    crashed = ThreadLeases(url, lease_s=1.0, wait_s=0)
    crashed.acquire("u/t")
    crashed._stop.set()  # the process "dies": no more heartbeats (its row stays behind)
    crashed._held.clear()
    waiting = ThreadLeases(url, lease_s=1.0, wait_s=0)
    with pytest.raises(ThreadBusyError):
        waiting.acquire("u/t")
    started = time.monotonic()
    taker = ThreadLeases(url, lease_s=1.0, wait_s=5)
    holder = taker.acquire("u/t")
    assert 0.3 < time.monotonic() - started < 3 and holder
    for leases in (crashed, waiting, taker):
        leases.close()


def test_the_heartbeat_keeps_a_long_turns_lease(database):
    url = database("sessions")
    running = ThreadLeases(url, lease_s=1.0, wait_s=0)
    with running.hold("u/long"):
        time.sleep(2.5)  # longer than the lease: renewed every lease_s / 3
        other = ThreadLeases(url, lease_s=1.0, wait_s=0)
        with pytest.raises(ThreadBusyError):
            other.acquire("u/long")
    assert other.acquire("u/long")
    running.close()
    other.close()
