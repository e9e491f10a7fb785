"""The Python API of issue 7: sync, async and streamed turns, direct tool calls, cancel."""

from __future__ import annotations

import asyncio

from agent_helpers import call

from agent import Atelier
from agent.planners.scripted import ScriptedModel
from agent.session import TurnEvent, TurnResult


def test_send_returns_answer_tool_calls_and_image_paths(make_app):
    app = make_app(ScriptedModel([call("generate_image", prompt="a teapot", count=2), "Two teapots."]))
    result = app.session("api-sync", user_id="u1").send("two teapots")
    assert isinstance(result, TurnResult)
    assert result.thread_id == "api-sync" and result.answer == "Two teapots."
    assert result.tool_calls[0]["args"] == {"prompt": "a teapot", "count": 2}
    assert len(result.images) == 2 and len({i["ref"] for i in result.images}) == 2
    from pathlib import Path

    for image in result.images:
        assert Path(image["path"]).is_file() and image["width"] == 64


async def test_asend_and_astream(make_app):
    app = make_app(ScriptedModel([call("generate_image", prompt="a lantern"), "A lantern."]))
    session = app.session("api-async")
    result = await session.asend("a lantern")
    assert result.answer == "A lantern." and len(result.images) == 1

    events = [e async for e in session.astream("/relight warm left")]  # a generative edit: has steps
    assert all(isinstance(e, TurnEvent) for e in events)
    kinds = [e.kind for e in events]
    assert kinds[-1] == "done" and "progress" in kinds
    progress = [e.data for e in events if e.kind == "progress"]
    assert progress[-1]["step"] == progress[-1]["total"] and progress[0]["call_id"]
    done = events[-1].data["result"]
    assert app.store.get(done.images[0]["ref"]).parent == result.images[0]["ref"]


def test_call_tool_runs_the_same_screens_and_seal_without_the_planner(make_app):
    planner = ScriptedModel()
    app = make_app(planner)
    session = app.session("api-direct")
    made = session.call_tool("generate_image", {"prompt": "a violin", "aspect_ratio": "16:9"})
    assert made.images and made.images[0]["width"] > made.images[0]["height"]
    assert app.store.get(made.images[0]["ref"]).metadata.get("watermark_id")
    bad = session.call_tool("relight_image", {"image": "img_0123456789ab"})
    assert bad.error["code"] == "unknown_ref" and bad.images == []
    worse = session.call_tool("generate_image", {"prompt": "x", "count": 9})
    assert worse.error["code"] == "bad_arguments"
    assert planner.calls == []


async def test_cancel_stops_the_engine_and_ends_the_turn(make_app):
    app = make_app(ScriptedModel([call("generate_image", prompt="a slow painting"), "never said"]),
                   engine={"steps": 30})
    session = app.session("api-cancel")
    kinds = []
    async for event in session.astream("paint slowly"):
        kinds.append(event.kind)
        if event.kind == "progress":
            session.cancel()
        if event.kind == "done":
            result = event.data["result"]
    assert 1 <= kinds.count("progress") < 30  # stopped at a step, long before the end
    assert result.answer == "Stopped." and result.images == []
    assert result.tool_calls[0]["result"]["ok"] is False
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
    assert all(app.session(f"api-par-{i}").current == results[i].images[0]["ref"] for i in range(3))
