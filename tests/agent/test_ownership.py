"""Ownership inside a turn: the planner's calls, consent and history resolve refs only for the
turn's user (the surfaces' side is tests/ui/test_isolation.py)."""

from __future__ import annotations

import json

from agent_helpers import call

from agent.planners.scripted import ScriptedModel


def test_a_planner_call_on_another_users_ref_is_an_unknown_ref(make_app):
    app = make_app(ScriptedModel([call("generate_image", prompt="a red kite")]))
    alice_ref = app.session("t", user_id="alice").send("a red kite").images[0].ref

    unknown = "img_0123456789ab"
    # a planner may still write a ref (contract arguments are accepted); "Sorry." answers the
    # plan step's request to fix the call
    script = ScriptedModel([call("generate_image", prompt="my own kite"),
                            call("adjust_image", image=alice_ref, exposure_ev=1.0), "Sorry.",
                            call("adjust_image", image=unknown, exposure_ev=1.0), "Sorry."], then=None)
    app2 = make_app(script, root=app.profile.store.root)  # the same store: Alice's image is there
    bob = app2.session("t", user_id="bob")
    own = bob.send("a kite of my own").images[0].ref  # so the calls below are not "upload one first"
    before = len(bob.messages())
    first = bob.send("brighten " + alice_ref)
    other = json.dumps(bob.messages()[before:])
    before = len(bob.messages())
    second = bob.send("brighten " + unknown)
    missing = json.dumps(bob.messages()[before:])
    assert first.images == [] and second.images == []
    assert first.tool_calls == second.tool_calls == [] and first.answer == second.answer == "Sorry."
    # the plan step sends the call back (the ref is not an image of this chat) or the tool says
    # "no image": either way the turn reads exactly as for a ref nobody made (no existence oracle)
    assert other.replace(alice_ref, "REF") == missing.replace(unknown, "REF")
    assert bob.current == own
    assert [v.ref for v in app2.images_for("bob").all_versions()] == [own]


def test_the_planner_sees_only_the_users_own_images(make_app):
    app = make_app(ScriptedModel([call("generate_image", prompt="a blue boat"), "Nothing to see."]))
    alice_ref = app.session("same-name", user_id="alice").send("a blue boat").images[0].ref
    bob = app.session("same-name", user_id="bob")
    assert bob.history() == [] and bob.current is None
    assert bob.send("what images do I have?").answer == "Nothing to see."
    seen = str(app.planner.calls[-1])
    assert alice_ref not in seen and "a blue boat" not in seen  # neither Alice's images nor her words


def test_thread_keys_keep_local_threads_and_separate_users():
    from agent.session import thread_key

    assert thread_key("local", "cli") == "cli"  # threads from before users existed still open
    keys = {thread_key("local", "@bob/t1"), thread_key("bob", "t1"), thread_key("bo/b", "t1"),
            thread_key("bo", "b/t1"), thread_key("local", "t1")}
    assert len(keys) == 5  # no user id and thread id pair spells another user's key


def test_answering_a_question_nobody_asks_any_more_is_a_clear_error(make_app):
    import pytest

    from tools.errors import AtelierError

    app = make_app(["Hello."])
    session = app.session("q", user_id="carol")
    with pytest.raises(AtelierError, match="no question waiting"):
        session.resume(approved=True)


def test_too_many_images_in_one_message(make_app, tmp_path):
    import pytest
    from PIL import Image

    from tools.errors import BadImageError

    app = make_app()
    path = tmp_path / "x.png"
    Image.new("RGB", (16, 16), "red").save(path)
    limit = app.profile.limits.max_images_per_turn
    with pytest.raises(BadImageError, match="the limit is"):
        app.session("many").send("/adjust exposure=+1", images=[path] * (limit + 1))
    assert app.images_for("local").all_versions() == []  # refused before anything was stored
