"""The Python API of issue 7: sync, async and streamed turns, direct tool calls, cancel."""

from __future__ import annotations

import asyncio

from typing import get_args

from agent_helpers import call

from agent import Atelier
from agent.planners.scripted import ScriptedModel
from agent.session import TurnEvent, TurnResult
from agent.turn import CallRecord, OutputImage

EVENT_TYPES = get_args(get_args(TurnEvent)[0])  # the models of the TurnEvent union


def test_send_returns_answer_tool_calls_and_image_paths(make_app):
    app = make_app(ScriptedModel([call("generate_image", prompt="a teapot", count=2)], then=None))
    result = app.session("api-sync", user_id="u1").send("two teapots")
    assert isinstance(result, TurnResult)
    assert result.thread_id == "api-sync"
    assert result.answer == "Here are 2 new pictures of a teapot (64x64, #1 and #2)."
    assert result.planner_calls == 1 and result.error is None and result.consent is None
    [made] = result.tool_calls
    assert isinstance(made, CallRecord) and made.name == "generate_image" and made.code is None
    assert made.args == {"prompt": "a teapot", "count": 2} and made.result.ok
    assert len(result.images) == 2 and len({i.ref for i in result.images}) == 2
    assert made.result.images == [i.ref for i in result.images]
    from pathlib import Path

    for image in result.images:
        assert isinstance(image, OutputImage)
        assert Path(image.path).is_file() and image.width == 64 == image.height


async def test_asend_and_astream(make_app):
    app = make_app(ScriptedModel([call("generate_image", prompt="a lantern")], then=None))
    session = app.session("api-async")
    result = await session.asend("a lantern")
    assert result.answer.startswith("Here is a new picture of a lantern") and len(result.images) == 1

    events = [e async for e in session.astream("/relight warm left")]  # a generative edit: has steps
    assert all(isinstance(e, EVENT_TYPES) for e in events)
    kinds = [e.kind for e in events]
    assert kinds[-1] == "done" and "progress" in kinds
    progress = [e for e in events if e.kind == "progress"]
    assert progress[-1].step == progress[-1].total and progress[0].call_id
    assert progress[0].data == {"call_id": progress[0].call_id, "step": progress[0].step,
                                "total": progress[0].total}  # `data`: the fields a surface serialises
    done = events[-1].result
    assert app.store.get(done.images[0].ref).parent == result.images[0].ref
    assert done.answer.startswith("I relit #1") and "#2" in done.answer


def test_call_tool_runs_the_same_screens_and_seal_without_the_planner(make_app):
    planner = ScriptedModel()
    app = make_app(planner)
    session = app.session("api-direct")
    made = session.call_tool("generate_image", {"prompt": "a violin", "aspect_ratio": "16:9"})
    assert made.images and made.images[0].width > made.images[0].height
    assert app.store.get(made.images[0].ref).metadata.get("watermark_id")
    assert made.error is None and made.planner_calls == 0
    bad = session.call_tool("relight_image", {"image": "img_0123456789ab"})
    assert bad.error.code == "unknown_ref" and bad.images == []
    assert bad.tool_calls[0].result.ok is False and bad.tool_calls[0].code == "unknown_ref"
    worse = session.call_tool("generate_image", {"prompt": "x", "count": 9})
    assert worse.error.code == "bad_arguments"
    assert planner.calls == []


async def test_cancel_stops_the_engine_and_ends_the_turn(make_app):
    app = make_app(ScriptedModel([call("generate_image", prompt="a slow painting")], then=None),
                   engine={"steps": 30})
    session = app.session("api-cancel")
    kinds = []
    async for event in session.astream("paint slowly"):
        kinds.append(event.kind)
        if event.kind == "progress":
            session.cancel()
        if event.kind == "done":
            result = event.result
    assert 1 <= kinds.count("progress") < 30  # stopped at a step, long before the end
    assert result.answer == "Stopped." and result.images == []
    assert result.tool_calls[0].result.ok is False and result.tool_calls[0].code == "cancelled"
    assert session.history() == []
    # the session goes on normally afterwards
    assert session.send("/generate a quick sketch").images


def test_atelier_builds_from_a_profile_name_with_overrides(tmp_path):
    app = Atelier("tiny", {"store": {"root": str(tmp_path)}, "engine": {"steps": 1}})
    assert app.profile.name == "tiny" and app.profile.engine.steps == 1
    assert app.store.url.startswith(str(tmp_path))
    assert isinstance(app.planner, ScriptedModel)  # the tiny profile's demo planner
    app.close()


def test_concurrent_sessions_in_threads(make_app):
    app = make_app()

    async def run_all():
        return await asyncio.gather(*(app.session(f"api-par-{i}").asend(f"/generate a tile {i}") for i in range(3)))

    results = asyncio.run(run_all())
    assert all(len(r.images) == 1 for r in results)
    assert all(app.session(f"api-par-{i}").current == results[i].images[0].ref for i in range(3))
