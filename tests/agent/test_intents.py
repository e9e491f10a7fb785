"""The planner's words become contract arguments in code: signs and units are not the model's."""

from __future__ import annotations

import pytest

from agent.intents import plan_json_schemas, to_contract
from agent.resolver import Facts
from tools.errors import ToolArgumentError
from tools.schemas import validate_call

PHOTO = [{"ref": "img_0000aaaa", "origin": "upload"}]
RELIT = [*PHOTO, {"ref": "img_0000bbbb", "origin": "relight_image", "parent": "img_0000aaaa",
                  "tool_call": {"name": "relight_image",
                                "args": {"image": "img_0000aaaa", "direction": "left", "intensity": 1.5,
                                         "color_temperature": 3000}}}]


@pytest.mark.parametrize("said, want", [
    ({"rotate": "clockwise", "rotate_degrees": 90}, {"rotate_deg": -90.0}),
    ({"rotate": "counter-clockwise", "rotate_degrees": 4}, {"rotate_deg": 4.0}),
    ({"rotate": "clockwise"}, {"rotate_deg": -90.0}),
    ({"white_balance": "warmer"}, {"white_balance_k": 5200}),
    ({"white_balance": "much cooler"}, {"white_balance_k": 9000}),
    ({"cut_bottom": 0.33}, {"crop": [0, 0, 1, 0.67]}),
    ({"cut_left": 0.1, "cut_right": 0.1}, {"crop": [0.1, 0, 0.9, 1]}),
    ({"exposure_ev": -0.5}, {"exposure_ev": -0.5}),
])
def test_adjust_words(said, want):
    args = to_contract("adjust_image", said, Facts.of(PHOTO))
    assert args == {"image": "img_0000aaaa", **want}


@pytest.mark.parametrize("said, want", [
    ({"orbit": "left", "orbit_degrees": 45}, {"camera_azimuth": 45.0}),  # the contract: + = the subject's left
    ({"orbit": "right"}, {"camera_azimuth": -30.0}),
    ({"view": "from below"}, {"camera_elevation": -30.0}),
    ({"view": "low angle"}, {"camera_elevation": -30.0}),
    ({"view": "top-down (overhead)"}, {"camera_elevation": 60.0}),
    ({"view": "from above", "view_degrees": 15}, {"camera_elevation": 15.0}),
    ({"zoom": "out"}, {"zoom": 0.7}),
    ({"zoom": "a bit in", "shot": "close-up"}, {"zoom": 1.2, "shot": "close-up"}),
])
def test_reframe_words(said, want):
    assert to_contract("reframe_image", said, Facts.of(PHOTO)) == {"image": "img_0000aaaa", **want}


def test_relight_light_words_and_kelvin():
    facts = Facts.of(PHOTO)
    assert to_contract("relight_image", {"light": "warm", "direction": "top-left"}, facts)["color_temperature"] < 4000
    assert to_contract("relight_image", {"light": "cool"}, facts)["color_temperature"] > 6500
    assert to_contract("relight_image", {"kelvin": 4800, "light": "warm"}, facts)["color_temperature"] == 4800


def test_stronger_or_weaker_relights_the_source_again():
    """'Weaker' on a relit image is the same light from its source, weaker (not stacked)."""
    facts = Facts.of(RELIT)
    weaker = to_contract("relight_image", {"strength": "a bit weaker"}, facts)
    assert weaker["image"] == "img_0000aaaa"
    assert weaker["intensity"] < 1.5 and weaker["direction"] == "left" and weaker["color_temperature"] == 3000
    stronger = to_contract("relight_image", {"strength": "stronger"}, facts)
    assert stronger["intensity"] > 1.5
    # on a photo that was never relit, relative to unchanged light (1)
    assert to_contract("relight_image", {"strength": "stronger"}, Facts.of(PHOTO))["intensity"] > 1


def test_contract_arguments_pass_through():
    facts = Facts.of(PHOTO)
    assert to_contract("reframe_image", {"camera_azimuth": -20, "zoom": 0.8}, facts) == {
        "image": "img_0000aaaa", "camera_azimuth": -20, "zoom": 0.8}
    assert to_contract("adjust_image", {"rotate_deg": 2}, facts)["rotate_deg"] == 2


def test_bad_words_are_one_line_errors():
    facts = Facts.of(PHOTO)
    with pytest.raises(ToolArgumentError, match="rotate"):
        to_contract("adjust_image", {"rotate": "sideways"}, facts)
    with pytest.raises(ToolArgumentError, match="unknown tool"):
        to_contract("crop_image", {}, facts)
    with pytest.raises(ToolArgumentError, match="whole picture"):
        to_contract("adjust_image", {"cut_left": 0.6, "cut_right": 0.6}, facts)
    with pytest.raises(ToolArgumentError, match="glow is not an argument here"):
        to_contract("relight_image", {"glow": 3}, facts)


def test_every_planned_tool_translates_to_a_valid_contract_call():
    facts = Facts.of(PHOTO)
    minimal = {"generate_image": {"prompt": "a fox"}, "edit_image": {"instruction": "add a hat"},
               "relight_image": {"light": "warm"}, "reframe_image": {"zoom": "out"},
               "adjust_image": {"exposure_ev": 1}, "revert": {"image": "#1"}}
    names = [t["function"]["name"] for t in plan_json_schemas()]
    assert set(names) == set(minimal)
    for name in names:
        if name == "revert":
            facts2 = Facts.of(RELIT)
            validate_call(name, to_contract(name, {}, facts2))
            continue
        validate_call(name, to_contract(name, minimal[name], facts))
