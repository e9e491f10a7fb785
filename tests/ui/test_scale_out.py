"""The scale-out deployment of the README: several `atelier serve` processes (here two, each with
its own data root, as on two machines) share one PostgreSQL database (`store.url`: sessions, thread
leases, audit log, rate limits) and one image store (`store.images`, any fsspec URL), so a load
balancer may send each request of a chat to any of them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from agent import Atelier
from tools.errors import DatabaseFileError
from tools.safety import AuditLog

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`atelier serve --profile tiny` in its own process and data root, on the shared stores."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        self.log_path = root / "server.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ui.cli", "serve", "--profile", "tiny", "--port", str(self.port),
             "--log-level", "warning"],
            cwd=REPO, env={**os.environ, **env, "ATELIER_STORE__ROOT": str(root)},
            stdout=self.log_path.open("w"), stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            try:
                if httpx.get(self.base + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise AssertionError("the server did not start: " + self.log_path.read_text()[-3000:])

    def chat(self, text: str, thread: str) -> httpx.Response:
        return httpx.post(self.base + "/v1/chat/completions", timeout=120, headers={"X-Atelier-Thread": thread},
                          json={"model": "atelier-tiny", "messages": [{"role": "user", "content": text}]})

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {row[0] for row in conn.execute("select tablename from pg_tables where schemaname = 'public'")}


def test_two_servers_share_one_postgres_and_one_image_store(tmp_path, postgres_url):
    shared = {
        "ATELIER_STORE__URL": postgres_url,
        "ATELIER_STORE__IMAGES": str(tmp_path / "shared-images"),
        "ATELIER_PROVENANCE__KEY_DIR": str(tmp_path / "shared-keys"),  # one signing identity
        "ATELIER_ENGINE__STEPS": "2",
        "ATELIER_LIMITS__PER_USER": "4/minute",
    }
    a, b = Server(tmp_path / "machine-a", shared), Server(tmp_path / "machine-b", shared)
    try:
        a.wait_ready()
        b.wait_ready()
        made = a.chat("/generate a lighthouse at dusk", "harbour")
        assert made.status_code == 200, made.text
        first = made.json()["atelier"]["images"][0]["ref"]
        # the next turn of the same chat lands on the other machine: it continues the thread
        adjusted = b.chat("/adjust exposure=+0.5", "harbour")
        assert adjusted.status_code == 200, adjusted.text
        second = adjusted.json()["atelier"]["images"][0]
        assert second["ref"] != first
        assert second.get("parent") in (None, first)  # adjusted the image made on the other machine
        # either machine serves either image (one image store)
        for server in (a, b):
            for ref in (first, second["ref"]):
                assert httpx.get(f"{server.base}/v1/files/{ref}", timeout=30).status_code == 200
        # and either machine knows the whole version tree: undo on the first machine goes back
        # from the version the second one made to the one before it
        undone = a.chat("/undo", "harbour")
        assert undone.status_code == 200, undone.text
        (call,) = undone.json()["atelier"]["tool_calls"]
        assert call["name"] == "revert" and call["result"]["current"] == first

        # one quota for the deployment: 4 per minute over both machines, not 4 each
        assert b.chat("/adjust exposure=-0.2", "harbour").status_code == 200
        refused = a.chat("/adjust exposure=-0.2", "harbour")
        assert refused.status_code == 429, refused.text
        assert b.chat("/adjust exposure=-0.2", "other-chat").status_code == 429
    finally:
        a.stop()
        b.stop()

    # nothing of the shared state went to the machines' own SQLite files
    for root in (tmp_path / "machine-a", tmp_path / "machine-b"):
        assert not list(root.glob("*.sqlite")), list(root.glob("*.sqlite"))
    assert {"checkpoints", "checkpoint_writes", "atelier_thread_leases", "audit", "rate_entries"} <= _tables(
        postgres_url)
    audit = AuditLog(postgres_url)  # both machines wrote to the one audit log
    assert len(audit.events(event="request")) >= 4
    assert len(audit.events(event="rate_limited")) == 2  # one refusal on each machine
    audit.close()


def test_one_database_url_moves_every_store_and_a_second_process_continues(tmp_path, postgres_url):
    overrides = {"store": {"root": str(tmp_path / "one"), "url": postgres_url, "images": str(tmp_path / "images")},
                 "engine": {"steps": 2}, "limits": {"per_user": "1000/minute"}}
    store = Atelier("tiny", overrides).profile.store
    assert store.sessions_url() == store.audit_url() == store.ratelimits_url() == store.threads_url() == postgres_url
    first = Atelier("tiny", overrides)
    made = first.session("t1", user_id="ana").send("/generate a red bicycle")
    assert made.error is None and made.images
    first.close()
    # another process, another data root: the same thread, history and images
    overrides["store"]["root"] = str(tmp_path / "two")
    second = Atelier("tiny", overrides)
    session = second.session("t1", user_id="ana")
    assert [v.ref for v in session.history()] == [made.images[0].ref]
    adjusted = session.send("/adjust exposure=+1")
    assert adjusted.error is None and adjusted.images[0].ref != made.images[0].ref
    assert second.session("t1", user_id="bob").history() == []  # still per user
    second.close()


def test_a_postgres_url_that_cannot_be_reached_is_one_line(tmp_path):
    url = f"postgresql://atelier:secret-pw@127.0.0.1:{_free_port()}/atelier"
    app = Atelier("tiny", {"store": {"root": str(tmp_path), "url": url}})
    with pytest.raises(DatabaseFileError) as err:
        app.session("t1").send("/generate a cat")
    message = str(err.value)
    assert "\n" not in message and "127.0.0.1" in message and "secret-pw" not in message
    assert "store.url" in message


def test_store_url_must_be_postgres(tmp_path):
    from agent.config import ProfileError, load_profile

    with pytest.raises(ProfileError, match="PostgreSQL URL"):
        load_profile("tiny", {"store": {"url": "mysql://db/atelier"}})


def test_a_dropped_connection_costs_one_reconnect_not_every_later_request(tmp_path, postgres_url):
    """A database restart or a proxy that drops idle connections: every store reconnects."""
    from agent.leases import ThreadLeases
    from tools.safety import RateLimiter

    app = Atelier("tiny", {"store": {"root": str(tmp_path), "url": postgres_url, "images": str(tmp_path / "images")},
                           "engine": {"steps": 2}, "limits": {"per_user": "100/minute"}})
    session = app.session("t1", user_id="ana")
    assert session.send("/generate a kite").error is None
    log, limiter, leases = AuditLog(postgres_url), RateLimiter("100/minute", postgres_url), ThreadLeases(postgres_url)
    log.record("request", user_id="u", text="one")
    limiter.hit("u")
    assert leases.try_acquire("t", "h1")
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()[0]
    assert killed >= 4  # the session's pool, the audit log, the limiter, the leases
    log.record("request", user_id="u", text="two")
    assert [e["text"] for e in log.events(user_id="u")] == ["one", "two"]
    limiter.hit("u")
    assert limiter.remaining("u") == 98
    assert leases.try_acquire("t", "h1") and not leases.try_acquire("t", "h2")
    assert session.send("/adjust exposure=+0.5").error is None
    assert len(session.history()) == 2
    for closable in (log, limiter, leases, app):
        closable.close()


def test_processes_that_start_at_once_set_the_database_up_once(postgres_url):
    """Every store creates its tables on first use; machines that start together must not
    collide or wait for each other forever (index builds wait for open transactions)."""
    from concurrent.futures import ThreadPoolExecutor

    from agent.session import open_checkpointer
    from tools.safety import RateLimiter
    from ui.chat_app.data_layer import ensure_schema

    def start(_):
        saver = open_checkpointer(postgres_url)
        limiter = RateLimiter("5/minute", postgres_url)
        ensure_schema(postgres_url)
        log = AuditLog(postgres_url)
        return saver, limiter, log

    with ThreadPoolExecutor(4) as pool:
        started = [f.result(timeout=120) for f in [pool.submit(start, i) for i in range(4)]]
    assert {"checkpoints", "rate_entries", "threads", "steps", "audit"} <= _tables(postgres_url)
    for saver, limiter, log in started:
        saver.conn.close()
        limiter.close()
        log.close()
