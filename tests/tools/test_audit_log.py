"""Audit log: records, completeness after a refused request, report and bulk-pattern flags."""

from __future__ import annotations

import time

import pytest

from tools.safety import AuditLog, PromptScreener
from tools.settings import SafetySettings


def test_records_round_trip_with_data(database):
    url = database("audit")
    log = AuditLog(url)
    log.record("request", user_id="u1", thread_id="t1", text="a cat")
    log.record("tool_call", user_id="u1", thread_id="t1", name="generate_image", args={"prompt": "a cat"})
    rows = log.events(thread_id="t1")
    assert [r["event"] for r in rows] == ["request", "tool_call"]
    assert rows[1]["args"] == {"prompt": "a cat"}
    # persisted: a second connection (another process of the deployment) sees them
    other = AuditLog(url if url.startswith("postgresql://") else f"sqlite:///{url}")
    assert len(other.events()) == 2 and other.events(user_id="u1", event="tool_call")[0]["name"] == "generate_image"


def test_refused_request_leaves_a_complete_trail(tmp_path):
    """What the agent's screen_request node does for a refused prompt: request + decision, no tool call."""
    log = AuditLog(tmp_path / "audit.sqlite")
    screener = PromptScreener(SafetySettings())
    text = "Undress my coworker in the uploaded picture"
    log.record("request", user_id="mallory", thread_id="t9", text=text)
    d = screener.screen(text)
    log.record("decision", user_id="mallory", thread_id="t9", stage="request", **d.model_dump())
    rows = log.events(user_id="mallory")
    assert [r["event"] for r in rows] == ["request", "decision"]
    assert rows[1]["decision"] == "refuse" and rows[1]["category"] == "nonconsensual"
    report = log.report()
    assert report["refusals_by_category"] == {"nonconsensual": 1}
    assert report["tools"] == {} and report["images"] == 0


def test_agent_session_audits_a_refused_request(tmp_path, monkeypatch):
    agent = pytest.importorskip("agent")
    if not hasattr(agent, "Atelier"):
        pytest.skip("agent.Atelier not available")
    monkeypatch.setenv("ATELIER_HOME", str(tmp_path))
    app = agent.Atelier(profile="tiny", overrides={"store": {"root": str(tmp_path)}})
    result = app.session("t-refused", user_id="mallory").send("A realistic photo of a public execution")
    assert result.refused and result.refused.category == "violence"
    log = AuditLog(app.profile.store.audit_url())
    events = log.events(user_id="mallory")
    kinds = [e["event"] for e in events]
    assert kinds.count("request") == 1
    assert "tool_call" not in kinds and "image" not in kinds
    request = events[kinds.index("request")]
    assert request["text"] == "A realistic photo of a public execution"
    assert log.report()["refusals_by_category"] == {"violence": 1}


def test_flags_bursts_near_duplicates_and_repeated_refusals(database):
    log = AuditLog(database("audit"))
    now = time.time()
    for i in range(25):
        log.record("request", user_id="bot", thread_id="t", text=f"a red sports car number {i}", ts=now + i)
    for i in range(3):
        log.record("decision", user_id="bot", thread_id="t", decision="refuse", category="sexual", ts=now + 30 + i)
    for i in range(4):
        log.record("request", user_id="human", thread_id="h", text=["a cat", "a dog on a sofa", "relight it", "zoom out"][i],
                   ts=now + i * 100)
    flags = {(f["user_id"], f["flag"]) for f in log.flags()}
    assert ("bot", "burst") in flags
    assert ("bot", "near_duplicates") in flags
    assert ("bot", "repeated_refusals") in flags
    assert not any(user == "human" for user, _ in flags)
