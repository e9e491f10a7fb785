"""The turn with a scripted planner: one model call per turn (plus at most one repair round),
images made, stored and sealed as versions, the answer composed from the results; tool errors
are recorded and answered, unreadable or invalid calls go back to the model once."""

from __future__ import annotations

from agent_helpers import call, calls, last_tool_message, planner_request

from agent.planners.base import PlannerReply, ToolCall
from agent.planners.scripted import ScriptedModel


def test_generate_stores_a_sealed_version_and_answers_from_the_result(make_app):
    planner = ScriptedModel([call("generate_image", prompt="a lighthouse at dusk", aspect_ratio="9:16")],
                            then=None)  # a second model call would raise
    app = make_app(planner)
    session = app.session("t-gen")
    events = list(session.stream("make me a phone wallpaper of a lighthouse at dusk"))
    kinds = [e.kind for e in events]
    result = events[-1].result

    assert kinds[-1] == "done" and "progress" in kinds and "image" in kinds
    assert kinds.index("tool_start") < kinds.index("progress") < kinds.index("tool_end")
    assert [c.name for c in result.tool_calls] == ["generate_image"]
    assert len(result.images) == 1
    image = result.images[0]
    assert image.height > image.width  # 9:16
    # the answer comes from the result, not from a second model call
    assert result.answer == f"Here is a new picture of a lighthouse at dusk ({image.width}x{image.height}, #1)."
    assert len(planner.calls) == 1 and result.planner_calls == 1
    assert [e.text for e in events if e.kind == "answer"] == [result.answer]
    [end] = [e for e in events if e.kind == "tool_end"]
    assert end.result.ok and end.result.images == [image.ref] == result.tool_calls[0].result.images
    version = app.store.get(image.ref)
    assert version.origin == "generated" and version.parent is None
    assert version.tool_call["name"] == "generate_image"
    assert version.metadata.get("watermark_id")
    assert session.current == image.ref
    assert [v.ref for v in session.history()] == [image.ref]
    # the stored bytes are the sealed file (C2PA + watermark), not the raw render
    from tools.provenance import verify_bytes

    report = verify_bytes(app.store.read_bytes(image.ref))
    assert report["c2pa"]["present"] and report["c2pa"]["actions"] == ["c2pa.created"]
    assert report["c2pa"]["soft_binding"] == version.metadata["watermark_id"]


def test_the_next_turn_sees_the_image_by_number_never_by_ref(make_app):
    planner = ScriptedModel([call("generate_image", prompt="a lighthouse at dusk"), "It is a lighthouse."])
    app = make_app(planner)
    session = app.session("t-numbers")
    ref = session.send("a lighthouse at dusk").images[0].ref
    result = session.send("what is in it?")
    assert result.answer == "It is a lighthouse." and result.tool_calls == []
    seen = planner_request(planner.calls[-1])
    assert "#1 generated: a lighthouse at dusk (current)" in seen
    assert ref not in seen and "img_" not in seen


def test_follow_up_edits_the_current_image_with_a_parent_link(make_app):
    # the model names no image: the current one is meant
    planner = ScriptedModel([call("adjust_image", white_balance="warmer")], then=None)
    app = make_app(planner)
    session = app.session("t-follow")
    first = session.send("/generate a red barn")
    ref = first.images[0].ref
    second = session.send("make it warmer")
    [adjusted] = second.tool_calls
    assert adjusted.name == "adjust_image" and adjusted.result.ok
    assert adjusted.args == {"image": ref, "white_balance_k": 5200}  # the friendly words, in the contract
    new = app.store.get(second.images[0].ref)
    assert new.parent == ref and new.origin == "edited"
    assert session.current == new.ref
    assert second.answer == ("I adjusted #1: white balance 5200 K (warmer). Nothing else changed. "
                             "The new version is #2.")


def test_a_call_can_name_its_image_by_number(make_app):
    planner = ScriptedModel([call("adjust_image", image="#1", exposure_ev=-0.5)], then=None)
    app = make_app(planner)
    session = app.session("t-number")
    first = session.send("/generate a red barn").images[0].ref
    session.send("/adjust contrast=1.3")
    result = session.send("take the first one and make it darker")
    assert result.tool_calls[0].args["image"] == first
    assert app.store.get(result.images[0].ref).parent == first
    assert result.answer.startswith("I adjusted #1: exposure -0.5 stops.") and "#3" in result.answer


def test_a_call_that_cannot_run_is_sent_back_once(make_app):
    planner = ScriptedModel([
        call("generate_image", prompt="a fox", count=40),  # invalid count: sent back
        call("generate_image", prompt="a fox"),
        "You're welcome.",  # the next turn's reply
    ], then=None)
    app = make_app(planner)
    result = app.session("t-errors").send("a fox please")

    # an argument problem is fixable even in a chat with no images yet (generate needs none)
    assert len(planner.calls) == 2, f"not sent back for repair; answered: {result.answer!r}"
    assert [c.result.ok for c in result.tool_calls] == [True] and len(result.images) == 1
    assert result.answer.startswith("Here is a new picture of a fox") and result.error is None
    assert result.planner_calls == 2
    said, repair = planner.calls[1][-2:]
    assert said["role"] == "assistant" and '"count": 40' in said["content"]  # its call, quoted back
    assert repair["role"] == "user" and "count" in repair["content"] and "cannot run as given" in repair["content"]
    assert "Message: a fox please" in planner_request(planner.calls[1])  # the request is still the message
    # the next turn's transcript leaves the repair exchange out
    assert app.session("t-errors").send("thanks").answer == "You're welcome."
    assert len(planner.calls) == 3
    assert "cannot run as given" not in planner_request(planner.calls[-1])


def test_a_call_that_still_cannot_run_after_the_repair_is_answered(make_app):
    planner = ScriptedModel([call("generate_image", prompt="a fox", count=40),
                             call("generate_image", prompt="a fox", aspect_ratio="5:4")], then=None)
    app = make_app(planner)
    session = app.session("t-errors2")
    session.send("/generate a hen")
    result = session.send("a fox please")

    assert len(planner.calls) == 2  # one repair round, no more
    assert result.tool_calls == [] and result.images == [] and result.error is None
    assert len(session.history()) == 1
    assert result.answer.startswith("Sorry, I could not do that:") and "aspect_ratio" in result.answer


def test_a_tool_failure_is_recorded_and_answered_and_the_next_call_runs(make_app, monkeypatch):
    import tools.image_tools as image_tools
    from tools.errors import EngineError

    real = image_tools.run_tool

    def engine(ctx, name, args):
        if name == "relight_image":
            raise EngineError("the engine ran out of memory")
        return real(ctx, name, args)

    planner = ScriptedModel([calls(("relight_image", {"light": "warm"}), ("adjust_image", {"exposure_ev": 1}))],
                            then=None)
    app = make_app(planner)
    session = app.session("t-tool-error")
    first = session.send("/generate a kite").images[0].ref
    monkeypatch.setattr(image_tools, "run_tool", engine)
    result = session.send("warmer light, then brighter")

    relit, adjusted = result.tool_calls
    assert relit.name == "relight_image" and relit.result.ok is False and relit.code == "engine_error"
    assert "ran out of memory" in relit.result.error
    assert adjusted.result.ok and adjusted.args["image"] == first  # the failure made nothing to work on
    assert result.answer.startswith("Relight image did not work:") and "ran out of memory" in result.answer
    assert "I adjusted #1" in result.answer and "#2" in result.answer
    assert len(planner.calls) == 1 and result.error is None  # no model call to read the failure
    failed = [m for m in session.messages() if m["role"] == "tool"][-2]
    assert failed["content"].startswith("ERROR:") and "ran out of memory" in failed["content"]
    assert last_tool_message(session.messages())["content"].startswith("new image(s):")


def test_an_edit_in_a_chat_without_images_asks_for_an_upload_without_asking_the_model_again(make_app):
    planner = ScriptedModel([call("edit_image", image="img_0123456789ab", instruction="more pro")])
    app = make_app(planner)
    result = app.session("t-no-image").send("edit it so it looks more pro")

    assert "upload" in result.answer and result.tool_calls == [] and result.images == []
    assert len(planner.calls) == 1  # the model cannot fix a missing photo: no repair round
    assert app.session("t-no-image").history() == []


def test_a_malformed_call_is_returned_once_for_repair(make_app):
    broken = PlannerReply(raw='<tool_call>{"name": "generate_image", "arguments": {prompt: </tool_call>',
                          malformed=['{"name": "generate_image", "arguments": {prompt: '])
    planner = ScriptedModel([broken, call("generate_image", prompt="a kite")], then=None)
    app = make_app(planner)
    result = app.session("t-repair").send("draw a kite")

    assert len(result.images) == 1 and result.answer.startswith("Here is a new picture of a kite")
    assert result.planner_calls == 2
    repair = planner.calls[1][-1]
    assert repair["role"] == "user" and "could not read" in repair["content"]
    assert "arguments" in repair["content"]  # the unreadable part is quoted back


def test_a_second_malformed_reply_ends_the_turn_politely(make_app):
    broken = PlannerReply(raw="<tool_call>{{{</tool_call>", malformed=["{{{"])
    planner = ScriptedModel([broken, broken, call("generate_image", prompt="never reached")])
    app = make_app(planner)
    result = app.session("t-repair2").send("draw something")

    assert len(planner.calls) == 2
    assert result.tool_calls == [] and result.images == []
    assert "rephrase" in result.answer


def test_a_planner_failure_is_an_error_in_the_result_not_an_exception(make_app):
    def boom(messages):
        raise ConnectionError("server went away")

    app = make_app(boom)
    result = app.session("t-boom").send("hello")
    assert result.error.code == "planner_error"
    assert "server went away" in result.answer and "server went away" in result.error.message


def test_an_empty_reply_ends_the_turn_with_an_answer(make_app):
    planner = ScriptedModel([PlannerReply(text="")], then=None)
    empty = make_app(planner).session("t-empty").send("hm")
    assert empty.answer and empty.tool_calls == [] and empty.error is None
    assert len(planner.calls) == 1  # an empty reply is answered, not sent back


def test_the_model_is_asked_once_and_its_edit_runs_once(make_app):
    """A planner that would ask for the same edit forever: the turn plans once, so the edit is
    never re-applied to its own result."""
    planner = ScriptedModel(lambda messages: PlannerReply(
        tool_calls=[ToolCall("adjust_image", {"white_balance_k": 4000})]))
    app = make_app(planner)
    session = app.session("t-reapply")
    first = session.send("/generate a lighthouse").images[0].ref
    result = session.send("make it warmer")
    assert [c.args["image"] for c in result.tool_calls] == [first]
    assert len(result.images) == 1 and app.store.get(result.images[0].ref).parent == first
    assert len(planner.calls) == 1 and result.planner_calls == 1


def test_done_without_a_call_is_sent_back_once(make_app):
    planner = ScriptedModel(["Done!", call("generate_image", prompt="a kite")], then=None)
    app = make_app(planner)
    result = app.session("t-done").send("draw a kite")

    assert result.answer.startswith("Here is a new picture of a kite") and len(result.images) == 1
    said, repair = planner.calls[1][-2:]
    assert said == {"role": "assistant", "content": "Done!", "repair": True}
    assert repair["role"] == "user" and "no tool ran" in repair["content"]

    twice = ScriptedModel(["Done!", "Done."], then=None)
    again = make_app(twice).session("t-done2").send("draw a kite")
    assert len(twice.calls) == 2 and again.tool_calls == []
    assert not again.answer.lower().startswith("done")  # nothing was done: the turn does not say so


def test_an_adjustment_that_would_remake_the_current_image_goes_back_to_the_model(make_app):
    def script(messages):
        request = planner_request(messages)
        if "brighten" in request.split("Message:")[-1]:
            return PlannerReply(tool_calls=[ToolCall("adjust_image", {"exposure_ev": 1})])
        assert "#2 adjusted from #1" in request and "(current)" in request
        ev = 0.5 if messages[-1].get("repair") else 1  # first the same +1 EV on the parent, then less
        return PlannerReply(tool_calls=[ToolCall("adjust_image", {"image": "#1", "exposure_ev": ev})])

    planner = ScriptedModel(script)
    app = make_app(planner)
    session = app.session("t-less")
    root = session.send("/generate a bookshop interior").images[0].ref
    session.send("brighten it by 1 stop")
    result = session.send("a bit less, too bright now")

    [done] = result.tool_calls
    assert done.args == {"image": root, "exposure_ev": 0.5} and done.result.ok
    assert result.planner_calls == 2
    repair = next(m for m in planner.calls[-1] if m.get("repair") and m["role"] == "user")
    assert "settings that made the current image from #1" in repair["content"]
    assert result.answer.startswith("I adjusted #1: exposure +0.5 stops.") and "#3" in result.answer
