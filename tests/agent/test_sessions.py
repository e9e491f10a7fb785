"""Sessions: they survive a restart, undo and branch through the image tree, rate limits and bad
uploads fail before anything runs."""

from __future__ import annotations

import pytest
from agent_helpers import call, planner_request

from agent.planners.scripted import ScriptedModel
from tools.errors import BadImageError, RateLimitedError, UnknownRefError


def test_a_session_survives_a_restart(make_app, tmp_path):
    first_app = make_app(ScriptedModel([call("generate_image", prompt="a blue boat")], then=None))
    made = first_app.session("t-restart", user_id="ana").send("a blue boat")
    ref = made.images[0].ref
    first_app.close()

    planner = ScriptedModel(["We have a boat and a brighter boat."])  # a fresh app, same data root
    second_app = make_app(planner)
    session = second_app.session("t-restart", user_id="ana")
    assert session.current == ref
    assert [v.ref for v in session.history()] == [ref]
    assert [m["role"] for m in session.messages()][:2] == ["user", "assistant"]

    follow = session.send("/adjust exposure=+1")
    assert second_app.store.get(follow.images[0].ref).parent == ref
    # the restarted planner sees the earlier conversation and the image list (by number)
    answer = session.send("what do we have?")
    assert answer.answer == "We have a boat and a brighter boat." and answer.tool_calls == []
    seen = planner_request(planner.calls[-1])
    assert "User: a blue boat" in seen
    assert "#1 generated: a blue boat" in seen and "#2 adjusted from #1" in seen
    assert seen.index("(current)") > seen.index("#2 adjusted") and "img_" not in seen


def test_threads_are_separate(make_app):
    app = make_app()
    a = app.session("t-a").send("/generate a cat")
    assert app.session("t-b").current is None
    assert app.session("t-b").history() == []
    assert app.session("t-a").current == a.images[0].ref


def test_undo_and_branch_make_a_tree(make_app):
    app = make_app()
    session = app.session("t-tree")
    root = session.send("/generate a mountain lake").images[0].ref
    brighter = session.send("/adjust exposure=+1").images[0].ref
    assert session.current == brighter

    undone = session.send("/undo")
    assert undone.images == [] and session.current == root
    assert undone.tool_calls[0].name == "revert" and undone.tool_calls[0].result.current == root
    assert undone.answer.startswith("Back to #1")

    warmer = session.send("/adjust white_balance_k=3500").images[0].ref  # a branch from the root
    children = {v.ref for v in session.images.children(root, session=session.key)}
    assert children == {brighter, warmer}

    session.send(f"/branch {brighter}")
    assert session.current == brighter
    deeper = session.send("/adjust contrast=1.3").images[0].ref
    assert [v.ref for v in app.store.lineage(deeper)] == [root, brighter, deeper]


def test_go_back_to_the_second_one_through_the_planner(make_app):
    planner = ScriptedModel([call("revert", image="#2")], then=None)  # the model names it by number
    app = make_app(planner)
    session = app.session("t-back")
    refs = [session.send(f"/generate {what}").images[0].ref for what in ("a pear", "an apple", "a plum")]
    result = session.send("go back to the second one")
    assert session.current == refs[1]
    [reverted] = result.tool_calls
    assert reverted.args == {"image": refs[1]} and reverted.result.current == refs[1]
    assert result.images == [] and result.answer.startswith("Back to #2 (the generated one)")
    assert "#2 generated: an apple" in planner_request(planner.calls[0])


def test_a_revert_without_an_image_goes_one_step_back(make_app):
    planner = ScriptedModel([call("revert")], then=None)
    app = make_app(planner)
    session = app.session("t-step-back")
    root = session.send("/generate a tulip").images[0].ref
    session.send("/adjust saturation=1.5")
    result = session.send("undo that")
    assert result.tool_calls[0].args == {"image": root} and session.current == root


def test_a_revert_to_the_current_image_is_answered_not_run(make_app):
    planner = ScriptedModel([call("revert", image="#2")], then=None)
    app = make_app(planner)
    session = app.session("t-already")
    session.send("/generate a tulip")
    made = session.send("/adjust exposure=+1").images[0].ref
    result = session.send("go back to the second one")
    assert result.tool_calls == [] and session.current == made
    assert "#2 is already the current image" in result.answer
    assert len(planner.calls) == 1  # answered, not sent back to the model


def test_a_revert_in_a_chat_with_one_image_is_sent_back_once(make_app):
    """With no earlier version at all a revert cannot be what was asked: the model may reconsider
    (the same request; the repair names the problem, not another tool)."""
    planner = ScriptedModel([call("revert", image="#1"), call("adjust_image", exposure_ev=1)], then=None)
    app = make_app(planner)
    session = app.session("t-one")
    session.send("/generate a tulip")
    result = session.send("brighter")
    assert [c.name for c in result.tool_calls] == ["adjust_image"] and result.planner_calls == 2
    assert "#1 is already the current image" in planner.calls[1][-1]["content"]


def test_undo_with_nothing_to_undo_is_a_clear_error(make_app):
    from tools.errors import ToolArgumentError

    session = make_app().session("t-undo0")
    with pytest.raises(ToolArgumentError, match="no current image"):
        session.send("/undo")
    session.send("/generate a pebble")
    with pytest.raises(ToolArgumentError, match="nothing to undo"):
        session.send("/undo")


def test_rate_limit_raises_before_anything_runs(make_app):
    planner = ScriptedModel()
    app = make_app(planner, limits={"per_user": "2/minute"})
    session = app.session("t-rate", user_id="eve")
    session.send("/generate a bee")
    session.send("/adjust exposure=-0.5")
    with pytest.raises(RateLimitedError) as err:
        session.send("a third request")
    assert err.value.retry_after > 0
    assert planner.calls == []  # the limited turn never reached the planner
    assert len(session.history()) == 2
    # another person is not limited by eve's requests
    assert app.session("t-rate-2", user_id="bob").send("/generate a wasp").images


def test_bad_upload_raises_before_anything_runs(make_app):
    planner = ScriptedModel()
    session = make_app(planner).session("t-bad")
    with pytest.raises(BadImageError):
        session.send("edit this", images=[b"\x89PNG\r\n\x1a\n not really a png"])
    with pytest.raises(UnknownRefError):
        session.send("edit this", images=["img_00000000aaaa"])
    assert planner.calls == [] and session.history() == []


def test_an_attachment_is_named_by_its_own_file_name(make_app, tmp_path):
    from agent.session import NamedImage

    planner = ScriptedModel()
    session = make_app(planner).session("t-named")
    copy = tmp_path / "62262bce-3b1f-4c55-9c0e-6f1a2b3c4d5e.png"  # the chat app's copy of the file
    copy.write_bytes(b"just some notes")
    with pytest.raises(BadImageError) as err:
        session.send("edit this", images=[NamedImage(copy, "cat.png")])
    assert str(err.value) == "cat.png: not an image Atelier can read (use PNG, JPEG or WebP)"
    with pytest.raises(BadImageError) as err:  # bytes without a name
        session.send("edit this", images=[b"just some notes"])
    assert str(err.value) == "the uploaded file: not an image Atelier can read (use PNG, JPEG or WebP)"
    with pytest.raises(BadImageError) as err:
        session.upload(b"just some notes")
    assert str(err.value).startswith("the uploaded file: ")
    assert planner.calls == [] and session.history() == []


def test_branch_from_reruns_a_turn_from_where_the_chat_stood(make_app):
    """Session.branch_from(n): the next turn starts after the first n user turns (a chat app's
    Regenerate / edited message), on the image current then; later turns leave the conversation."""
    app = make_app()  # the tiny profile's scripted planner: a message becomes generate_image
    session = app.session("t-branch")
    first = session.send("a lighthouse at dusk").images[0].ref
    second = session.send("/adjust exposure=+1").images[0].ref
    assert app.store.get(second).parent == first

    session.branch_from(1)  # regenerate the second turn
    assert session.current == first
    again = session.send("/adjust exposure=+1").images[0].ref
    assert app.store.get(again).parent == first and session.user_turns() == ["a lighthouse at dusk", "/adjust exposure=+1"]

    session.branch_from(0)  # regenerate the first
    redrawn = session.send("a lighthouse at dawn").images[0].ref
    assert app.store.get(redrawn).parent is None and session.user_turns() == ["a lighthouse at dawn"]
    assert {first, second, again, redrawn} <= {v.ref for v in session.history()}  # nothing lost from the tree

    session.branch_from(5)  # past the end: nothing to go back over, the next turn appends
    assert session.send("/adjust saturation=1.1").images and len(session.user_turns()) == 2


def test_a_branch_point_never_outlives_the_request_that_set_it(make_app):
    """A request that fails before its turn runs (too long, rate limited...) drops its branch
    point: the next ordinary message appends to the conversation, it does not rewind it."""
    from tools.errors import PromptTooLongError

    app = make_app()
    session = app.session("t-stale-branch")
    session.send("a red fox in the snow")
    session.send("/adjust exposure=+1")
    session.branch_from(1)
    with pytest.raises(PromptTooLongError):
        session.send("x" * 100_000)
    session.send("/adjust saturation=1.2")
    assert session.user_turns() == ["a red fox in the snow", "/adjust exposure=+1", "/adjust saturation=1.2"]
