"""The turn loop with a scripted planner: images made, stored and sealed as versions; tool errors
and malformed calls go back to the model."""

from __future__ import annotations

from agent.planners.base import PlannerReply, ToolCall
from agent.planners.scripted import ScriptedModel
from agent_helpers import call, last_tool_message


def test_generate_stores_a_sealed_version_and_the_model_sees_the_result(make_app):
    planner = ScriptedModel([call("generate_image", prompt="a lighthouse at dusk", aspect_ratio="9:16"),
                             "Here is your lighthouse."])
    app = make_app(planner)
    session = app.session("t-gen")
    events = list(session.stream("make me a phone wallpaper of a lighthouse at dusk"))
    kinds = [e.kind for e in events]
    result = events[-1].data["result"]

    assert kinds[-1] == "done" and "progress" in kinds and "image" in kinds
    assert kinds.index("tool_start") < kinds.index("progress") < kinds.index("tool_end")
    assert result.answer == "Here is your lighthouse."
    assert [c["name"] for c in result.tool_calls] == ["generate_image"]
    assert len(result.images) == 1
    image = result.images[0]
    assert image["height"] > image["width"]  # 9:16
    version = app.store.get(image["ref"])
    assert version.origin == "generated" and version.parent is None
    assert version.tool_call["name"] == "generate_image"
    assert version.metadata.get("watermark_id")
    assert session.current == image["ref"]
    assert [v.ref for v in session.history()] == [image["ref"]]
    # the planner's second call read the tool result with the new ref
    assert image["ref"] in last_tool_message(planner.calls[1])["content"]
    # the stored bytes are the sealed file (C2PA + watermark), not the raw render
    from tools.provenance import verify_bytes

    report = verify_bytes(app.store.read_bytes(image["ref"]))
    assert report["c2pa"]["present"] and report["c2pa"]["actions"] == ["c2pa.created"]
    assert report["c2pa"]["soft_binding"] == version.metadata["watermark_id"]


def test_follow_up_edits_the_current_image_with_a_parent_link(make_app):
    planner = ScriptedModel(lambda msgs: _edit_current(msgs))
    app = make_app(planner)
    session = app.session("t-follow")
    first = session.send("/generate a red barn")
    ref = first.images[0]["ref"]
    second = session.send("make it warmer")
    assert second.tool_calls[0]["name"] == "adjust_image"
    assert second.tool_calls[0]["args"]["image"] == ref
    new = app.store.get(second.images[0]["ref"])
    assert new.parent == ref and new.origin == "edited"
    assert session.current == new.ref


def _edit_current(messages):
    last = messages[-1]
    if last["role"] == "tool":
        return PlannerReply(text="Warmer now.")
    current = next(line.split()[1] for line in last["content"].splitlines() if "(current)" in line)
    return PlannerReply(tool_calls=[ToolCall("adjust_image", {"image": current, "white_balance_k": 4000})])


def test_a_call_that_cannot_run_is_sent_back_once_then_errors_are_tool_messages(make_app):
    planner = ScriptedModel([
        call("generate_image", prompt="a fox", count=40),  # invalid count: sent back
        call("generate_image", prompt="a fox", aspect_ratio="5:4"),  # repair spent: runs into a tool error
        call("generate_image", prompt="a fox"),
        "Done after two mistakes.",
    ])
    app = make_app(planner)
    result = app.session("t-errors").send("a fox please")

    assert result.answer == "Done after two mistakes."
    assert [c["result"]["ok"] for c in result.tool_calls] == [False, True]
    said, repair = planner.calls[1][-2:]
    assert said["role"] == "assistant" and '"count": 40' in said["content"]  # its call, quoted back
    assert repair["role"] == "user" and "count" in repair["content"] and "cannot run as given" in repair["content"]
    assert "Message: a fox please" in planner.calls[1][1]["content"]  # the request is still the message
    bad_args = last_tool_message(planner.calls[2])
    assert bad_args["content"].startswith("ERROR:") and "aspect_ratio" in bad_args["content"]
    assert len(result.images) == 1
    assert result.error is None
    # the next turn's transcript leaves the repair exchange out
    app.session("t-errors").send("thanks")  # the script is spent: the model answers "Done."
    assert "cannot run as given" not in planner.calls[-1][1]["content"]


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
    planner = ScriptedModel([broken, call("generate_image", prompt="a kite"), "There you go."])
    app = make_app(planner)
    result = app.session("t-repair").send("draw a kite")

    assert result.answer == "There you go." and len(result.images) == 1
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
    assert result.error["code"] == "planner_error"
    assert "server went away" in result.answer


def test_a_repeated_call_is_not_run_twice_and_an_empty_reply_ends_the_turn(make_app):
    same = call("generate_image", prompt="a lighthouse", aspect_ratio="9:16")
    planner = ScriptedModel([same, same, PlannerReply(text="")])
    app = make_app(planner)
    result = app.session("t-repeat").send("a lighthouse wallpaper")
    assert len(planner.calls) == 2  # the repeat ended the turn; the empty reply was never needed
    assert len(result.tool_calls) == 1 and len(result.images) == 1
    assert result.images[0]["ref"] in result.answer  # a summary of what was done

    empty = make_app(ScriptedModel([PlannerReply(text="")])).session("t-empty").send("hm")
    assert empty.answer and empty.tool_calls == [] and empty.error is None


def test_the_same_edit_is_not_re_applied_to_its_own_result(make_app):
    def planner(messages):
        last = messages[-1]
        current = next(line.split()[1] for m in reversed(messages) if m["role"] == "user"
                       for line in m["content"].splitlines() if "(current)" in line)
        if last["role"] == "tool":
            current = last["content"].split("current: ")[1].split(";")[0]
        return PlannerReply(tool_calls=[ToolCall("adjust_image", {"image": current, "white_balance_k": 4000})])

    app = make_app(planner)
    session = app.session("t-reapply")
    first = session.send("/generate a lighthouse").images[0]["ref"]
    result = session.send("make it warmer")
    assert [c["args"]["image"] for c in result.tool_calls] == [first]
    assert len(result.images) == 1 and app.store.get(result.images[0]["ref"]).parent == first


def test_done_without_a_call_is_sent_back_once(make_app):
    planner = ScriptedModel(["Done!", call("generate_image", prompt="a kite"), "Done: your kite."])
    app = make_app(planner)
    result = app.session("t-done").send("draw a kite")

    assert result.answer == "Done: your kite." and len(result.images) == 1
    said, repair = planner.calls[1][-2:]
    assert said == {"role": "assistant", "content": "Done!", "repair": True}
    assert repair["role"] == "user" and "no tool ran" in repair["content"]


def test_an_adjustment_that_would_remake_the_current_image_goes_back_to_the_model(make_app):
    import re

    def script(messages):
        last = messages[-1]
        if last["role"] == "tool":
            return PlannerReply(text="Done.")
        user = next(m for m in reversed(messages) if m["role"] == "user" and not m.get("repair"))
        current = re.search(r"(img_\w+) \((?:adjusted from (img_\w+)|generated)\).*\(current\)", user["content"])
        if "brighten" in user["content"].split("Message:")[-1]:
            return PlannerReply(tool_calls=[ToolCall("adjust_image", {"image": current[1], "exposure_ev": 1})])
        ev = 0.5 if last.get("repair") else 1  # first the same +1 EV on the parent, then less
        return PlannerReply(tool_calls=[ToolCall("adjust_image", {"image": current[2], "exposure_ev": ev})])

    planner = ScriptedModel(script)
    app = make_app(planner)
    session = app.session("t-less")
    session.send("/generate a bookshop interior")
    session.send("brighten it by 1 stop")
    result = session.send("a bit less, too bright now")

    [done] = result.tool_calls
    assert done["args"]["exposure_ev"] == 0.5 and done["result"]["ok"]
    repair = next(m for m in planner.calls[-2] if m.get("repair") and m["role"] == "user")
    assert "same adjustment that made" in repair["content"]
