"""Ownership inside a turn: the planner's calls, consent and history resolve refs only for the
turn's user (the surfaces' side is tests/ui/test_isolation.py)."""

from __future__ import annotations

import json

from agent_helpers import call

from agent.planners.scripted import ScriptedModel


def test_a_planner_call_on_another_users_ref_is_an_unknown_ref(make_app):
    app = make_app(ScriptedModel([call("generate_image", prompt="a red kite"), "Made."]))
    alice_ref = app.session("t", user_id="alice").send("a red kite").images[0]["ref"]

    unknown = "img_0123456789ab"
    script = ScriptedModel([call("generate_image", prompt="my own kite"), "Made.",
                            call("adjust_image", image=alice_ref, exposure_ev=1.0), "Sorry.",
                            call("adjust_image", image=unknown, exposure_ev=1.0), "Sorry."])
    app2 = make_app(script, root=app.profile.store.root)  # the same store: Alice's image is there
    bob = app2.session("t", user_id="bob")
    own = bob.send("a kite of my own").images[0]["ref"]  # so the calls below are not "upload one first"
    before = len(bob.messages())
    first = bob.send("brighten " + alice_ref)
    other = json.dumps(bob.messages()[before:])
    before = len(bob.messages())
    second = bob.send("brighten " + unknown)
    missing = json.dumps(bob.messages()[before:])
    assert first.images == [] and second.images == []
    # the plan step sends the call back (the ref is not an image of this chat) or the tool says
    # "no image": either way the turn reads exactly as for a ref nobody made (no existence oracle)
    assert other.replace(alice_ref, "REF") == missing.replace(unknown, "REF")
    assert bob.current == own
    assert [v.ref for v in app2.images_for("bob").all_versions()] == [own]


def test_the_planner_sees_only_the_users_own_images(make_app):
    app = make_app(ScriptedModel([call("generate_image", prompt="a blue boat"), "Made.", "Nothing to see."]))
    alice_ref = app.session("same-name", user_id="alice").send("a blue boat").images[0]["ref"]
    bob = app.session("same-name", user_id="bob")
    assert bob.history() == [] and bob.current is None
    bob.send("what images do I have?")
    seen = str(app.planner.calls[-1])
    assert alice_ref not in seen and "a blue boat" not in seen  # neither Alice's images nor her words
