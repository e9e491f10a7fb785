"""Each node of the turn graph alone: a plain function of the state and the runtime (its services
in the runtime context), called here without running the graph."""

from __future__ import annotations

import io
import threading

import pytest
from langgraph.runtime import Runtime
from PIL import Image

from agent import graph as g
from agent.graph import TurnContext, TurnState
from agent.planners.base import PlannerReply, ToolCall
from agent.planners.scripted import ScriptedModel
from agent.turn import PendingCall


def _png(color=(90, 140, 200), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def node_env(make_app):
    """(app, runtime, events): the tiny profile's services in a runtime whose writer keeps the events."""
    def make(script=None):
        app = make_app(ScriptedModel(script or []))
        events: list = []
        ctx = TurnContext(services=app.services, user_id="local", thread_id="t-nodes", cancel=threading.Event())
        return app, Runtime(context=ctx, store=None, stream_writer=events.append), events
    return make


def _state(**values) -> TurnState:
    return TurnState.model_validate(values)


def test_screen_request_resets_the_turn_and_makes_the_upload_current(node_env):
    app, runtime, events = node_env()
    ref = app.store.scoped("local").ingest(_png(), session="t-nodes").ref
    old = {"answer": "old", "calls": [{"name": "revert", "args": {}, "result": {"tool": "revert"}}]}
    update = g.screen_request(_state(messages=[{"role": "user", "content": "relight this", "images": [ref]}], **old),
                              runtime)
    assert update["current"] == ref and update["attached"] == [ref]
    assert update["answer"] == "" and update["calls"] == [] and not update["refused"]
    assert [e.kind for e in events] == ["status"]


def test_screen_request_refuses_before_planning(node_env):
    _, runtime, events = node_env()
    update = g.screen_request(_state(messages=[{"role": "user", "content": "put barack obama next to me"}]), runtime)
    assert update["refused"]["category"] and update["answer"].startswith("I can't help with that")
    assert g.after_request(_state(**{**update, "messages": []})) == "__end__"
    assert events[-1].kind == "refusal"


def test_plan_turns_the_planners_words_into_contract_calls(node_env):
    app, runtime, _ = node_env([PlannerReply(tool_calls=[ToolCall("adjust_image", {"rotate": "clockwise",
                                                                                    "rotate_degrees": 90})])])
    ref = app.store.scoped("local").ingest(_png(), session="t-nodes").ref
    update = g.plan(_state(messages=[{"role": "user", "content": "it's sideways"}], current=ref), runtime)
    [call] = update["queue"]
    assert call["name"] == "adjust_image" and call["args"] == {"image": ref, "rotate_deg": -90.0}
    assert update["planner_calls"] == 1 and update["messages"][0]["tool_calls"]


def test_plan_sends_an_invalid_call_back_once_then_answers(node_env):
    bad = PlannerReply(tool_calls=[ToolCall("adjust_image", {"exposure_ev": 12})], raw="bad")
    app, runtime, _ = node_env([bad, bad])
    ref = app.store.scoped("local").ingest(_png(), session="t-nodes").ref
    state = _state(messages=[{"role": "user", "content": "way brighter"}], current=ref)
    first = g.plan(state, runtime)
    assert first["repairs"] == 1 and first["messages"][-1]["repair"] is True and "queue" not in first
    second = g.plan(_state(**{**state.model_dump(), "repairs": 1}), runtime)
    assert "exposure_ev" in second["answer"] and "queue" not in second


def test_screen_call_validates_and_screens(node_env):
    app, runtime, events = node_env()
    ref = app.store.scoped("local").ingest(_png(), session="t-nodes").ref
    ok = g.screen_call(_state(queue=[PendingCall(name="adjust_image", args={"image": ref, "exposure_ev": 1})],
                              current=ref), runtime)
    assert ok["call"]["name"] == "adjust_image" and ok["decision"]["decision"] == "allow" and ok["queue"] == []
    bad = g.screen_call(_state(queue=[PendingCall(name="adjust_image", args={"image": ref, "exposure_ev": 99})]),
                        runtime)
    assert bad["call"] is None and bad["calls"][0]["result"]["ok"] is False
    assert [e.kind for e in events][-1] == "tool_end"


def test_run_tool_stages_and_seal_stores_a_version(node_env):
    app, runtime, events = node_env()
    store = app.store.scoped("local")
    ref = store.ingest(_png(), session="t-nodes").ref
    call = PendingCall(name="adjust_image", args={"image": ref, "exposure_ev": 1})
    ran = g.run_tool(_state(call=call, current=ref), runtime)
    assert ran["result"]["ok"] and len(ran["staged"]) == 1
    screened = g.screen_result(_state(call=call, current=ref, **ran), runtime)
    sealed = g.seal(_state(call=call, current=ref, result=ran["result"], staged=screened["staged"]), runtime)
    [made] = sealed["images"]
    assert sealed["current"] == made and store.get(made).parent == ref
    assert sealed["calls"][0]["result"]["watermark_ids"]
    assert {"image", "tool_end"} <= {e.kind for e in events}


def test_answer_composes_from_the_records_without_a_model(node_env):
    app, runtime, _ = node_env()  # the scripted model has no replies: a model call would fail
    store = app.store.scoped("local")
    ref = store.ingest(_png(), session="t-nodes").ref
    made = store.put(_png((200, 90, 90)), parent=ref, session="t-nodes", origin="edited",
                     tool_call={"name": "adjust_image", "args": {"image": ref, "exposure_ev": 1}}).ref
    update = g.answer(_state(current=made, calls=[{"name": "adjust_image", "args": {"image": ref, "exposure_ev": 1},
                                                    "result": {"tool": "adjust_image", "images": [made]}}]), runtime)
    assert update["answer"] == "I adjusted #1: exposure +1 stop. Nothing else changed. The new version is #2."
    assert app.services.planner.calls == []
