"""The plan step: a planner's reply becomes contract calls, or one repair of that call, or an
answer; and the contract's lenient spellings (a call that reads "upper left" runs as "top-left").
The checks hold for any wording: nothing here reads the user's message."""

import pytest

from agent.planners.base import PlannerReply, ToolCall
from agent.planners.checking import plan_step, repair_messages
from agent.resolver import Facts
from tools.errors import ToolArgumentError
from tools.schemas import validate_call

PHOTOS = [{"ref": "img_aaaa0001", "origin": "upload"}, {"ref": "img_aaaa0002", "origin": "upload"}]
FACTS = Facts.of(PHOTOS)


def reply(name, **args):
    return PlannerReply(tool_calls=[ToolCall(name, args)], raw=f"{name} {args}")


def test_a_good_call_becomes_a_contract_call_on_the_resolved_image():
    step = plan_step(reply("relight_image", direction="left", light="warm"), FACTS)
    [call] = step.calls
    assert not step.kind and call.name == "relight_image"
    assert call.args == {"image": "img_aaaa0002", "direction": "left", "color_temperature": 3200}
    assert call.said == {"direction": "left", "light": "warm"}
    assert plan_step(reply("generate_image", prompt="a kite"), Facts.of([])).calls[0].args == {"prompt": "a kite"}


def test_a_text_reply_is_the_answer():
    step = plan_step(PlannerReply(text="Which one do you mean?"), FACTS)
    assert step.answer == "Which one do you mean?" and not step.calls and not step.exchange


def test_a_call_that_needs_an_image_in_a_chat_without_one_asks_for_an_upload():
    step = plan_step(reply("edit_image", image="the one I uploaded", instruction="more pro"), Facts.of([]))
    assert step.kind == "ask_upload" and "upload" in step.answer and not step.exchange
    # a reply that also creates an image is planned as usual (its later bad call is dropped)
    both = PlannerReply(tool_calls=[ToolCall("generate_image", {"prompt": "a cat"}),
                                    ToolCall("relight_image", {"image": "#4"})])
    assert [c.name for c in plan_step(both, Facts.of([])).calls] == ["generate_image"]


def test_an_unknown_image_or_bad_argument_goes_back_once_for_the_same_call():
    step = plan_step(reply("edit_image", image="#7", instruction="x"), FACTS)
    assert step.kind == "repair_call" and "#1 to #2" in step.problem
    assert step.exchange[-1]["content"].count("same tool") == 1  # the repair asks to fix, not to change course
    bad = plan_step(reply("adjust_image", exposure_ev=9), FACTS)
    assert bad.kind == "repair_call" and "exposure_ev" in bad.problem
    # the second time it is answered in plain words, not run and not repaired again
    again = plan_step(reply("adjust_image", exposure_ev=9), FACTS, can_repair=False)
    assert again.kind == "cannot_plan" and again.answer and not again.exchange and not again.calls


def test_a_revert_to_the_image_on_screen_is_answered_not_repaired():
    step = plan_step(reply("revert", image="#2"), FACTS)
    assert step.kind == "cannot_plan" and "#2 is already the current image" in step.answer
    assert not step.exchange  # never talked into another action


def test_an_edit_does_not_bring_in_its_own_image():
    [call] = plan_step(reply("edit_image", image="#1", references=["#1", "#2"], instruction="add him"), FACTS).calls
    assert call.args["references"] == ["img_aaaa0002"]


def test_later_calls_with_problems_are_dropped():
    two = PlannerReply(tool_calls=[ToolCall("relight_image", {"light": "cool"}),
                                   ToolCall("adjust_image", {"image": "#9", "exposure_ev": 1})])
    assert [c.name for c in plan_step(two, FACTS).calls] == ["relight_image"]


def test_unreadable_replies_go_back_once():
    broken = PlannerReply(malformed=['{"name": "edit_image", "arguments": {'], raw="<tool_call>{...")
    step = plan_step(broken, FACTS)
    assert step.kind == "repair" and step.exchange
    assert plan_step(broken, FACTS, can_repair=False).answer


def test_the_repair_exchange_quotes_the_call_and_is_flagged():
    r = PlannerReply(tool_calls=[ToolCall("revert", {"image": "x"})], raw="<tool_call>raw</tool_call>")
    said, ask = repair_messages(r, "please fix")
    assert said == {"role": "assistant", "content": "<tool_call>raw</tool_call>", "repair": True}
    assert ask == {"role": "user", "content": "please fix", "repair": True}


def test_done_with_no_call_before_any_tool_ran_goes_back():
    step = plan_step(PlannerReply(text="Done: img_aaaa0001"), FACTS, deciding=True)
    assert step.kind == "repair_done" and step.exchange
    assert plan_step(PlannerReply(text="Done."), FACTS, deciding=False).answer == "Done."


@pytest.mark.parametrize("args", [{}, {"white_balance_k": 6500}, {"exposure_ev": 0, "contrast": 1}])
def test_an_adjustment_that_changes_nothing_goes_back(args):
    step = plan_step(reply("adjust_image", **args), FACTS)
    assert step.kind == "repair_call" and "change nothing" in step.problem


def test_repeating_the_adjustment_that_made_the_current_image_goes_back():
    made = [PHOTOS[0], {"ref": "img_aaaa0003", "origin": "adjust_image", "parent": "img_aaaa0001",
                        "tool_call": {"name": "adjust_image", "args": {"image": "img_aaaa0001", "exposure_ev": 1}}}]
    facts = Facts.of(made)
    step = plan_step(reply("adjust_image", image="#1", exposure_ev=1), facts)
    assert step.kind == "repair_call" and "nothing would change" in step.problem
    assert plan_step(reply("adjust_image", image="#1", exposure_ev=0.5), facts).calls




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


