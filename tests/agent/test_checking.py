"""What the plan step sends back to the model before anything runs, and the contract's lenient
spellings (a call that reads "upper left" runs as "top-left")."""

import pytest

from agent.planners.base import PlannerReply, ToolCall
from agent.planners.checking import call_problems, repair_messages, review
from tools.errors import ToolArgumentError
from tools.schemas import validate_call

REFS = ["img_aaaa0001", "img_aaaa0002"]


def reply(name, **args):
    return PlannerReply(tool_calls=[ToolCall(name, args)])


def problems(r, refs=REFS, current=None):
    return [p for call in call_problems(r, refs=refs, current=current) for p in call]


def read_back(name, message, **args):
    """The problems of one call on img_aaaa0001 read back against `message`."""
    return [p for call in call_problems(reply(name, image="img_aaaa0001", **args), refs=REFS, message=message)
            for p in call]


def test_a_good_call_has_no_problems():
    assert problems(reply("relight_image", image="img_aaaa0002", direction="left"), current="img_aaaa0002") == []
    assert review(reply("generate_image", prompt="a kite"), refs=[]) is None
    assert review(PlannerReply(text="Which one do you mean?"), refs=REFS) is None


def test_words_where_a_ref_belongs_with_no_images_ask_for_an_upload():
    [problem] = problems(reply("edit_image", image="the one I uploaded", instruction="x"), refs=[])
    assert "'the one I uploaded'" in problem and "no images in this chat" in problem


def test_a_made_up_ref_lists_the_real_ones():
    [problem] = problems(reply("edit_image", image="img_aaaa0003", instruction="x",
                               references=["img_aaaa0001"]))
    assert "img_aaaa0003" in problem and "img_aaaa0001, img_aaaa0002" in problem


def test_revert_to_the_current_image_and_self_reference_are_problems():
    [undo] = problems(reply("revert", image="img_aaaa0002"), current="img_aaaa0002")
    assert "already the current image" in undo
    assert problems(reply("revert", image="img_aaaa0001"), current="img_aaaa0002") == []
    [self_ref] = problems(reply("edit_image", image="img_aaaa0001", instruction="add him",
                                references=["img_aaaa0001"]))
    assert "references" in self_ref


def test_later_calls_with_problems_are_dropped_but_a_bad_first_call_goes_back():
    two = PlannerReply(tool_calls=[ToolCall("generate_image", {"prompt": "a cat"}),
                                   ToolCall("relight_image", {"image": "generated_image"})])
    assert review(two, refs=[]) is None
    assert [c.name for c in two.tool_calls] == ["generate_image"]
    swapped = PlannerReply(tool_calls=[ToolCall("relight_image", {"image": "generated_image"}),
                                       ToolCall("generate_image", {"prompt": "a cat"})])
    kind, problem = review(swapped, refs=[])
    assert kind == "repair_call" and "'generated_image'" in problem and len(swapped.tool_calls) == 2


def test_invalid_arguments_and_unreadable_replies_are_told_apart():
    kind, problem = review(reply("generate_image", prompt="x", aspect_ratio="5:4"), refs=[])
    assert kind == "repair_call" and "aspect_ratio" in problem
    kind, problem = review(PlannerReply(malformed=["{name: "]), refs=[])
    assert kind == "repair" and "{name: " in problem


def test_the_repair_exchange_quotes_the_call_and_is_flagged():
    said, ask = repair_messages(reply("revert", image="img_aaaa0002"), "fix it")
    assert said["role"] == "assistant" and '"revert"' in said["content"] and said["repair"]
    assert ask == {"role": "user", "content": "fix it", "repair": True}


@pytest.mark.parametrize("spelled, meant", [
    ("upper left", "top-left"), ("Top_Right", "top-right"), ("from behind", "back"), ("below", "bottom"),
    ("left", "left"),
])
def test_light_directions_are_read_leniently(spelled, meant):
    assert validate_call("relight_image", {"image": "img_aaaa0001", "direction": spelled}).direction == meant


@pytest.mark.parametrize("spelled, meant", [("9x16", "9:16"), ("16/9", "16:9"), (" 3 : 2 ", "3:2")])
def test_aspect_ratios_are_read_leniently(spelled, meant):
    assert validate_call("generate_image", {"prompt": "x", "aspect_ratio": spelled}).aspect_ratio == meant


@pytest.mark.parametrize("args", [{"direction": "diagonal"}, {"direction": "lower-right"}])
def test_directions_outside_the_enum_still_fail(args):
    with pytest.raises(ToolArgumentError, match="direction"):
        validate_call("relight_image", {"image": "img_aaaa0001", **args})


@pytest.mark.parametrize("field, spelled, meant", [
    ("camera_azimuth", "45 left", 45.0), ("camera_azimuth", "30 degrees to his right", -30.0),
    ("camera_azimuth", -20, -20.0), ("camera_azimuth", "15", 15.0),
])
def test_camera_orbit_reads_the_subjects_side(field, spelled, meant):
    assert getattr(validate_call("reframe_image", {"image": "img_aaaa0001", field: spelled}), field) == meant


@pytest.mark.parametrize("spelled, meant", [("90 clockwise", -90.0), ("90 counter-clockwise", 90.0),
                                            ("anti-clockwise 45", 45.0), (180, 180.0)])
def test_rotation_reads_clockwise(spelled, meant):
    assert validate_call("adjust_image", {"image": "img_aaaa0001", "rotate_deg": spelled}).rotate_deg == meant


def test_degrees_without_a_number_or_out_of_range_still_fail():
    with pytest.raises(ToolArgumentError, match="camera_azimuth"):
        validate_call("reframe_image", {"image": "img_aaaa0001", "camera_azimuth": "a bit left"})
    with pytest.raises(ToolArgumentError, match="camera_azimuth"):
        validate_call("reframe_image", {"image": "img_aaaa0001", "camera_azimuth": "200 left"})


def test_done_with_no_call_before_any_tool_ran_goes_back():
    kind, said = review(PlannerReply(text="Done: img_aaaa0002"), refs=REFS, deciding=True)
    assert kind == "repair_done" and said == "Done: img_aaaa0002"
    # after a tool result "Done" is the answer; a question is never sent back
    assert review(PlannerReply(text="Done: img_aaaa0002"), refs=REFS, deciding=False) is None
    assert review(PlannerReply(text="Which of the two do you mean?"), refs=REFS, deciding=True) is None


@pytest.mark.parametrize("message, azimuth, bad", [
    ("rotate the camera about 45 degrees to her left", -45, True),
    ("rotate the camera about 45 degrees to her left", 45, False),
    ("swing the camera round to his right a bit, maybe 30°", 30, True),
    ("swing the camera round to his right a bit, maybe 30°", -30, False),
    ("show the subject's right side", 60, True),
    ("move the camera to the left", -45, False),  # the viewer's left: not read
    ("from her left to his right", 45, False),  # both sides named: not read
])
def test_the_azimuth_sign_is_read_back_against_the_subjects_side_the_message_names(message, azimuth, bad):
    found = read_back("reframe_image", message, camera_azimuth=azimuth)
    assert bool(found) is bad
    if bad:
        assert "positive = the subject's left" in found[0]
        verdict = review(reply("reframe_image", image="img_aaaa0001", camera_azimuth=azimuth), refs=REFS,
                         message=message)
        assert verdict[0] == "repair_call"


@pytest.mark.parametrize("message, degrees, bad", [
    ("rotate it 90° clockwise", 90, True),
    ("rotate it 90° clockwise", -90, False),
    ("turn it anticlockwise by 90", -90, True),
    ("turn it counter-clockwise by 90", 90, False),
    ("turn it upside down, clockwise", 180, False),  # half a turn is both
    ("rotate it 90 degrees", 90, False),
])
def test_rotate_sign_is_read_back_against_clockwise(message, degrees, bad):
    found = read_back("adjust_image", message, rotate_deg=degrees)
    assert bool(found) is bad
    if bad:
        assert "positive = counter-clockwise" in found[0]


def test_read_back_uses_the_validated_value_of_a_lenient_spelling():
    ok = reply("reframe_image", image="img_aaaa0001", camera_azimuth="45 left")
    assert call_problems(ok, refs=REFS, message="45 degrees to her left") == [[]]
    wrong = reply("reframe_image", image="img_aaaa0001", camera_azimuth="45 right")
    assert call_problems(wrong, refs=REFS, message="45 degrees to her left") != [[]]


def test_an_edit_with_no_image_in_the_chat_is_answered_not_sent_back():
    from agent.planners.checking import repair_request

    verdict = repair_request(reply("edit_image", image="img_aaaa0009", instruction="more pro"), refs=[], deciding=True)
    assert verdict.kind == "ask_upload" and verdict.exchange == [] and "upload" in verdict.answer
    # a reply that also creates an image is not an upload question: the bad call goes back
    both = PlannerReply(tool_calls=[ToolCall("relight_image", {"image": "generated"}),
                                    ToolCall("generate_image", {"prompt": "a cat"})])
    assert repair_request(both, refs=[]).kind == "repair_call"
    # with images in the chat, an unknown ref is something the model can fix
    assert repair_request(reply("edit_image", image="img_aaaa0009", instruction="x"), refs=REFS).kind == "repair_call"


def test_a_clockwise_turn_is_not_a_camera_orbit():
    orbit = reply("reframe_image", image="img_aaaa0001", camera_azimuth=90)
    [problem] = read_back("reframe_image", "its sideways, rotate it 90° clockwise", camera_azimuth=90)
    assert "call adjust_image with rotate_deg" in problem
    assert call_problems(orbit, refs=REFS, message="rotate the camera 90 degrees around her") == [[]]


TREE = [
    {"ref": "img_eeee0001", "origin": "upload"},
    {"ref": "img_eeee0002", "origin": "edit_image", "parent": "img_eeee0001"},
    {"ref": "img_eeee0003", "origin": "relight_image", "parent": "img_eeee0002"},
    {"ref": "img_eeee0004", "origin": "adjust_image", "parent": "img_eeee0003"},
]
TREE_REFS = [im["ref"] for im in TREE]


@pytest.mark.parametrize("message, target, wanted", [
    ("this got messy, go back to the original", "img_eeee0003", "img_eeee0001"),
    ("go back to the original", "img_eeee0001", None),
    ("hmm go back to the version before the relighting", "img_eeee0003", "img_eeee0002"),
    ("take me back to before I relit it", "img_eeee0002", None),
    ("back to before the edit please", "img_eeee0003", "img_eeee0001"),
    ("undo that", "img_eeee0003", None),  # undo is the model's to read
    ("go back to the blue one", "img_eeee0002", None),
])
def test_a_revert_goes_to_the_version_the_message_names_by_the_tree(message, target, wanted):
    found = [p for c in call_problems(reply("revert", image=target), refs=TREE_REFS, current="img_eeee0004",
                                      message=message, images=TREE) for p in c]
    if wanted is None:
        assert found == []
    else:
        [problem] = found
        assert f"which is {wanted}, not {target}" in problem


def test_repeating_the_adjustment_that_made_the_current_image_is_sent_back():
    from tools.store import ImageVersion

    parent = ImageVersion(ref="img_ffff0001", sha256="0" * 64, width=8, height=8)
    made = ImageVersion(ref="img_ffff0002", sha256="1" * 64, width=8, height=8, parent="img_ffff0001", origin="edited",
                        tool_call={"name": "adjust_image", "args": {"image": "img_ffff0001", "exposure_ev": 1.0}})
    refs = ["img_ffff0001", "img_ffff0002"]
    again = reply("adjust_image", image="img_ffff0001", exposure_ev=1)
    [problem] = [p for c in call_problems(again, refs=refs, current="img_ffff0002", images=[parent, made],
                                          message="a bit less, too bright now") for p in c]
    assert "same adjustment that made img_ffff0002" in problem
    less = reply("adjust_image", image="img_ffff0001", exposure_ev=0.5)
    assert call_problems(less, refs=refs, current="img_ffff0002", images=[parent, made]) == [[]]
    # on the current image it is one more stop, not a repeat
    more = reply("adjust_image", image="img_ffff0002", exposure_ev=1)
    assert call_problems(more, refs=refs, current="img_ffff0002", images=[parent, made]) == [[]]


@pytest.mark.parametrize("message, ratio, bad", [
    ("can you make this landscape instead of portrait? extend the scenery on the sides", "3:4", True),
    ("can you make this landscape instead of portrait? extend the scenery on the sides", "16:9", False),
    ("make it vertical for my phone", "16:9", True),
    ("make it vertical for my phone", "9:16", False),
    ("turn this portrait into 16:9", "16:9", False),  # an explicit ratio: the model's to read
    ("make the portrait square", "1:1", False),
    ("extend this portrait to a landscape", "16:9", False),  # both named: not read
    ("zoom out a bit", "4:3", False),
])
def test_a_reframe_has_the_orientation_the_message_names(message, ratio, bad):
    found = read_back("reframe_image", message, aspect_ratio=ratio)
    assert bool(found) is bad
    if bad:
        assert f"aspect_ratio {ratio}" in found[0] and "the user asked for" in found[0]


@pytest.mark.parametrize("args, bad", [
    ({"white_balance_k": 6500}, True),  # neutral white balance is not "warmer"
    ({"exposure_ev": 0, "contrast": 1}, True),
    ({"rotate_deg": 360}, True),
    ({"crop": [0, 0, 1, 1]}, True),
    ({"white_balance_k": 5000}, False),
    ({"white_balance_k": 6500, "saturation": 1.2}, False),
    ({"rotate_deg": -90}, False),
])
def test_an_adjustment_that_changes_nothing_is_sent_back(args, bad):
    found = read_back("adjust_image", "", **args)
    assert bool(found) is bad
    if bad:
        assert "change nothing" in found[0] and "lower is warmer" in found[0]


@pytest.mark.parametrize("name, args, message, bad", [
    ("relight_image", {"color_temperature": 5500}, "make it warmer", True),
    ("relight_image", {"color_temperature": 3000}, "make it warmer", False),
    ("relight_image", {"color_temperature": 4500}, "make it feel like cold moonlight", True),
    ("relight_image", {"color_temperature": 8000}, "make it feel like cold moonlight", False),
    ("adjust_image", {"white_balance_k": 7000}, "a touch warmer white balance", True),
    ("adjust_image", {"white_balance_k": 5500}, "a touch warmer white balance", False),
    ("adjust_image", {"white_balance_k": 5000}, "the colours are too warm", False),  # "too warm": not read
    ("relight_image", {"color_temperature": 5500}, "warm key light and a cool blue rim", False),  # both named
    ("relight_image", {"direction": "left"}, "warm light from the left", False),  # no kelvin given
    ("relight_image", {"color_temperature": 5000}, "relight the first one with cool blue light", True),
    ("relight_image", {"color_temperature": 3000}, "make it look cool, like a movie poster", False),  # slang
])
def test_warm_or_cool_is_read_back_against_the_kelvin(name, args, message, bad):
    found = read_back(name, message, **args)
    assert bool(found) is bad
    if bad:
        assert "neutral" in found[0]


def test_every_kind_of_step_the_images_block_names_can_be_named_in_a_message():
    from agent.planners.checking import _NAMES_BEFORE
    from agent.prompting import STEP_NOUNS

    assert set(_NAMES_BEFORE) == set(STEP_NOUNS.values())
