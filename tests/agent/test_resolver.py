"""The resolver picks the image a call acts on from the conversation's facts."""

from __future__ import annotations

import pytest

from agent.resolver import Facts, PlanError, resolve_image, resolve_images

# an upload, edited, relit, then adjusted (a line of four), and a second upload sent with the message
TREE = [
    {"ref": "img_0000000a", "origin": "upload"},
    {"ref": "img_0000000b", "origin": "edit_image", "parent": "img_0000000a",
     "tool_call": {"name": "edit_image", "args": {"image": "img_0000000a", "instruction": "red jacket"}}},
    {"ref": "img_0000000c", "origin": "relight_image", "parent": "img_0000000b",
     "tool_call": {"name": "relight_image", "args": {"image": "img_0000000b", "intensity": 1.5}}},
    {"ref": "img_0000000d", "origin": "adjust_image", "parent": "img_0000000c"},
]


def test_no_image_named_means_the_current_one():
    facts = Facts.of(TREE)
    assert facts.current == "img_0000000d"
    assert resolve_image(None, facts, tool="relight_image") == "img_0000000d"
    assert resolve_image("current", facts) == "img_0000000d"


def test_a_photo_sent_with_the_message_wins_over_the_current_image():
    upload = {"ref": "img_0000000e", "origin": "upload"}
    facts = Facts.of([*TREE, upload], current="img_0000000d", attached=["img_0000000e"])
    assert resolve_image(None, facts, tool="relight_image") == "img_0000000e"
    # also when the model names "the current image" in words
    assert resolve_image("this", facts) == "img_0000000e"


def test_versions_by_number_and_by_the_tree():
    facts = Facts.of(TREE)
    assert resolve_image("#2", facts) == "img_0000000b"
    assert resolve_image("2", facts) == "img_0000000b"
    assert resolve_image("original", facts) == "img_0000000a"
    assert resolve_image("previous", facts) == "img_0000000c"
    assert facts.label("img_0000000c") == "#3"


def test_revert_without_an_image_is_one_step_back():
    facts = Facts.of(TREE)
    assert resolve_images("revert", {}, facts)["image"] == "img_0000000c"
    with pytest.raises(PlanError, match="no earlier version"):
        resolve_images("revert", {}, Facts.of(TREE[:1]))


def test_the_current_image_of_an_older_branch():
    # after going back to #2, "previous" and "original" follow #2's own line
    facts = Facts.of(TREE, current="img_0000000b")
    assert resolve_image(None, facts, tool="edit_image") == "img_0000000b"
    assert resolve_image("previous", facts) == "img_0000000a"
    assert resolve_image("original", facts) == "img_0000000a"


def test_unknown_images_are_one_line_errors():
    facts = Facts.of(TREE)
    with pytest.raises(PlanError, match=r"#1 to #4"):
        resolve_image("#9", facts)
    with pytest.raises(PlanError, match="not an image of this chat"):
        resolve_image("img_ffffffff", facts)
    with pytest.raises(PlanError, match="no image in this chat"):
        resolve_image(None, Facts.of([]), tool="edit_image")


def test_an_edits_references_are_other_images_without_repeats():
    scene = {"ref": "img_000000f1", "origin": "upload"}
    person = {"ref": "img_000000f2", "origin": "upload"}
    facts = Facts.of([scene, person], attached=["img_000000f1", "img_000000f2"])
    args = resolve_images("edit_image", {"image": "#1", "references": ["#2", "#2", "#1"], "instruction": "x"}, facts)
    assert args["image"] == "img_000000f1" and args["references"] == ["img_000000f2"]
