"""A failed checkpoint write is an error, never the previous answer; a corrupt sessions (or audit)
database is one line naming the file, and the file is never touched."""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from agent_helpers import tiny_overrides
from langgraph.checkpoint.sqlite import SqliteSaver
from PIL import Image

from agent import Atelier
from tools.errors import DatabaseFileError
from ui.cli import main

REPO = Path(__file__).resolve().parents[2]


def _png(seed: int = 1) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 30 + seed).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def _fail_writes(monkeypatch, error: Exception | None = None) -> None:
    """Every checkpoint write fails as on a read-only sessions file (SQLite's own error)."""
    error = error or sqlite3.OperationalError("attempt to write a readonly database")

    def put(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(SqliteSaver, "put", put)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _user_turns(session) -> int:
    return sum(1 for m in session.messages() if m["role"] == "user")


def test_a_failed_checkpoint_write_is_an_error_not_the_previous_answer(make_app, monkeypatch):
    session = make_app().session("t-save", user_id="ana")
    first = session.send("/adjust exposure=+1", images=[_png()])
    assert first.error is None and first.images and first.answer
    turns = _user_turns(session)

    _fail_writes(monkeypatch)
    events = list(session.stream("/adjust exposure=-0.5"))
    failed = events[-1].result
    assert failed.error.code == "checkpoint_failed" and failed.error.http_status == 503
    assert "could not be saved" in failed.error.message and "attempt to write a readonly database" in failed.answer
    assert "\n" not in failed.answer and "sessions.sqlite" in failed.answer
    # nothing of the previous turn comes back as this one's
    assert failed.answer != first.answer and failed.images == [] and failed.tool_calls == []
    assert [e.code for e in events if e.kind == "error"] == ["checkpoint_failed"]
    assert failed.error.message not in first.answer

    monkeypatch.undo()  # the database works again: the conversation goes on from the last saved turn
    assert _user_turns(session) == turns
    again = session.send("/adjust exposure=-0.5")
    assert again.error is None and again.images and again.images != first.images
    assert _user_turns(session) == turns + 1


def test_a_checkpoint_that_does_not_advance_is_an_error(make_app, monkeypatch):
    """A saver that accepts the write but keeps nothing (the snapshot is still the previous turn's)."""
    session = make_app().session("t-still", user_id="ana")
    first = session.send("/adjust exposure=+1", images=[_png(2)])
    assert first.error is None

    def put(self, config, checkpoint, metadata, new_versions):
        return {"configurable": {**config["configurable"], "checkpoint_id": checkpoint["id"]}}

    monkeypatch.setattr(SqliteSaver, "put", put)
    monkeypatch.setattr(SqliteSaver, "put_writes", lambda self, *a, **k: None)
    result = session.send("/adjust exposure=-0.5")
    assert result.error and result.error.code == "checkpoint_failed"
    assert result.images == [] and result.answer != first.answer and "not saved" in result.answer


def test_call_tool_with_a_failed_write_carries_the_error(make_app, monkeypatch):
    session = make_app().session("t-tool", user_id="ana")
    made = session.send("/adjust exposure=+1", images=[_png(3)])
    _fail_writes(monkeypatch, OverflowError("Python int too large to convert to SQLite INTEGER"))
    result = session.call_tool("adjust_image", {"image": made.images[0].ref, "exposure_ev": -1.0})
    assert result.error.code == "checkpoint_failed" and result.images == []
    assert "OverflowError" in result.answer and made.answer not in result.answer


@pytest.mark.parametrize("content", [b"this is not a database, just text\n" * 200, b"SQLite format 3\x00" + b"\xff" * 600])
def test_a_garbage_sessions_file_is_one_line_and_untouched(tmp_path, content):
    db = tmp_path / "sessions.sqlite"
    db.write_bytes(content)
    before = _digest(db)
    app = Atelier("tiny", tiny_overrides(tmp_path))
    session = app.session("t", user_id="ana")
    with pytest.raises(DatabaseFileError) as err:
        session.send("/generate a fox")
    message = str(err.value)
    assert str(db) in message and "not a readable Atelier sessions database" in message
    assert "move it aside or restore a backup" in message and "nothing was changed" in message
    assert "\n" not in message and err.value.http_status == 503
    with pytest.raises(DatabaseFileError):
        session.messages()
    app.close()
    assert _digest(db) == before
    assert not (tmp_path / "sessions.sqlite-wal").exists() or (tmp_path / "sessions.sqlite-wal").stat().st_size == 0


def test_a_truncated_sessions_database_is_one_line_and_untouched(tmp_path):
    app = Atelier("tiny", tiny_overrides(tmp_path))
    session = app.session("t", user_id="ana")
    for i in range(4):
        session.send(f"/adjust exposure={'+' if i % 2 == 0 else '-'}0.{i + 1}", images=[_png(i)] if i == 0 else None)
    app.close()
    db = tmp_path / "sessions.sqlite"
    assert not (tmp_path / "sessions.sqlite-wal").exists() or (tmp_path / "sessions.sqlite-wal").stat().st_size == 0
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    before = _digest(db)
    app = Atelier("tiny", tiny_overrides(tmp_path))
    with pytest.raises(DatabaseFileError) as err:
        app.session("t", user_id="ana").send("/adjust exposure=+1")
    assert str(db) in str(err.value) and "\n" not in str(err.value)
    app.close()
    assert _digest(db) == before


@pytest.mark.parametrize("kind", ["audit", "watermark registry", "rate-limit"])
def test_garbage_audit_watermark_and_rate_limit_databases_are_one_line_and_untouched(tmp_path, kind):
    from tools.provenance import WatermarkRegistry
    from tools.safety import AuditLog, RateLimiter

    db = tmp_path / "data.sqlite"
    db.write_bytes(os.urandom(4096))
    before = _digest(db)
    open_it = {"audit": AuditLog, "watermark registry": WatermarkRegistry,
               "rate-limit": lambda path: RateLimiter("5/minute", str(path))}[kind]
    with pytest.raises(DatabaseFileError) as err:
        open_it(db)
    assert str(db) in str(err.value) and f"Atelier {kind} database" in str(err.value) and "\n" not in str(err.value)
    assert _digest(db) == before


def test_cli_with_a_garbage_sessions_database_is_one_line(tmp_path):
    """`atelier chat --profile tiny "/generate a fox"` with a garbage sessions.sqlite under ATELIER_HOME."""
    home = tmp_path / "home"
    home.mkdir()
    db = home / "sessions.sqlite"
    db.write_bytes(os.urandom(8192))
    before = _digest(db)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    env["ATELIER_HOME"] = str(home)
    proc = subprocess.run([sys.executable, "-m", "ui.cli", "chat", "--profile", "tiny", "/generate a fox"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("(profile ")]
    assert len(lines) == 1, proc.stderr
    assert str(db) in lines[0] and "not a readable Atelier sessions database" in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert _digest(db) == before


def _cli_profile(tmp_path) -> str:
    from test_chat_cli import _profile

    return _profile(tmp_path)


def test_cli_with_a_failed_checkpoint_write_exits_non_zero_with_one_line(tmp_path, monkeypatch, capsys):
    profile = _cli_profile(tmp_path)
    picture = tmp_path / "in.png"
    picture.write_bytes(_png(5))
    assert main(["chat", "--profile", profile, "--image", str(picture), "/adjust exposure=+1"]) == 0
    previous = capsys.readouterr().out
    assert "adjust_image" in previous

    _fail_writes(monkeypatch)
    assert main(["chat", "--profile", profile, "/adjust exposure=-0.5"]) != 0
    out, err = capsys.readouterr()
    lines = [line for line in (out + err).splitlines() if line.strip() and not line.startswith("(profile ")
             and not line.startswith(("-> ", "\r"))]
    assert len(lines) == 1, out + err
    assert "could not be saved" in lines[0]
    assert "saved img_" not in out and "Traceback" not in err
