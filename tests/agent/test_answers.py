"""The turn's answer is composed from its results with the templates of prompts/answers.yaml."""

from __future__ import annotations

from agent.answers import compose, describe_call
from agent.resolver import Facts
from agent.turn import CallRecord
from tools.schemas import FaceCheck, ToolResult

VERSIONS = [
    {"ref": "img_00000001", "origin": "upload"},
    {"ref": "img_00000002", "origin": "relight_image", "parent": "img_00000001"},
    {"ref": "img_00000003", "origin": "adjust_image", "parent": "img_00000002"},
]
FACTS = Facts.of(VERSIONS)


def record(name, args, **result):
    return CallRecord(name=name, args=args, result=ToolResult(tool=name, **result))


def test_a_relight_says_the_light_in_words_and_the_new_version():
    text = describe_call(record("relight_image", {"image": "img_00000001", "direction": "top-left",
                                                  "color_temperature": 3200, "softness": "soft"},
                                images=["img_00000002"]), FACTS)
    assert text.startswith("I relit #1 with")
    assert "warm (3200 K)" in text and "soft" in text and "from the top left" in text and "#2" in text


def test_faces_kept_give_the_largest_distance_and_lost_faces_are_said_plainly():
    kept = record("edit_image", {"image": "img_00000001", "instruction": "make her smile"}, images=["img_00000002"],
                  faces=[FaceCheck(face=0, distance=0.21, same_person=True),
                         FaceCheck(face=1, distance=0.34, same_person=True)])
    text = describe_call(kept, FACTS)
    assert "All 2 people still look like themselves" in text and "0.34" in text
    lost = record("edit_image", {"image": "img_00000001", "instruction": "make her smile"}, images=["img_00000002"],
                  faces=[FaceCheck(face=0, distance=None, same_person=False, box=(0, 0, 10, 10))])
    text = describe_call(lost, FACTS)
    assert "Careful" in text and "lost" in text and "undo" in text and "#1" in text


def test_an_identity_change_that_was_asked_for_is_not_a_problem():
    changed = record("edit_image", {"image": "img_00000001", "instruction": "make him unrecognisable",
                                    "preserve_identity": False}, images=["img_00000002"],
                     faces=[FaceCheck(face=0, distance=0.9, same_person=False)])
    text = describe_call(changed, FACTS)
    assert "As asked" in text and "Careful" not in text


def test_adjustments_exposure_rotation_and_crop_in_words():
    text = describe_call(record("adjust_image", {"image": "img_00000002", "exposure_ev": -0.5, "rotate_deg": -90,
                                                 "crop": [0, 0, 1, 0.7]}, images=["img_00000003"]), FACTS)
    assert "exposure -0.5 stops" in text and "rotated 90° clockwise" in text and "cropped" in text
    assert "Nothing else changed" in text and "#3" in text


def test_reframe_and_revert():
    text = describe_call(record("reframe_image", {"image": "img_00000001", "camera_azimuth": 30,
                                                  "camera_elevation": -30, "zoom": 0.7}, images=["img_00000002"]), FACTS)
    assert "30° to the subject's left" in text and "seen from below" in text and "zoomed out" in text
    back = describe_call(record("revert", {"image": "img_00000001"}, current="img_00000001"), FACTS)
    assert back.startswith("Back to #1") and "uploaded photo" in back


def test_drift_corrections_from_the_note_are_said():
    r = record("edit_image", {"image": "img_00000001", "instruction": "add a hat"}, images=["img_00000002"],
               note="re-aligned a 6 px shift; kept the untouched 80% from the original")
    assert "I also re-aligned a 6 px shift and kept the untouched 80% from the original" in describe_call(r, FACTS)


def test_failures_refusals_and_declines_read_differently():
    failed = CallRecord(name="relight_image", args={"image": "img_00000001"}, code="engine_error",
                        result=ToolResult(tool="relight_image", ok=False, error="out of memory"))
    refused = CallRecord(name="edit_image", args={"image": "img_00000001"}, code="refused",
                         result=ToolResult(tool="edit_image", ok=False, error="that is not allowed"))
    assert describe_call(failed, FACTS) == "Relight image did not work: out of memory"
    assert describe_call(refused, FACTS) == "I can't do that: that is not allowed"


def test_a_turn_of_two_calls_answers_both_in_order():
    text = compose([record("relight_image", {"image": "img_00000001", "color_temperature": 7500},
                           images=["img_00000002"]),
                    record("adjust_image", {"image": "img_00000002", "saturation": 0.8}, images=["img_00000003"])],
                   FACTS)
    assert text.index("I relit #1") < text.index("I adjusted #2")
    assert "cool (7500 K)" in text and "saturation x0.8" in text
