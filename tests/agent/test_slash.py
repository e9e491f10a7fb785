"""Slash commands map to tool calls without the model."""

from __future__ import annotations

import pytest

from agent.slash import is_slash, parse_slash
from tools.errors import ToolArgumentError
from tools.schemas import validate_call

CUR = "img_0123456789ab"


@pytest.mark.parametrize(
    ("text", "tool", "args"),
    [
        ("/generate a red fox --aspect 9:16", "generate_image", {"prompt": "a red fox", "aspect_ratio": "9:16"}),
        ("/relight warm left", "relight_image", {"image": CUR, "color_temperature": 3200, "direction": "left"}),
        ("/relight golden hour sun soft", "relight_image",
         {"image": CUR, "color_temperature": 3500, "softness": "soft", "description": "hour sun"}),
        ("/adjust exposure=+1", "adjust_image", {"image": CUR, "exposure_ev": 1}),
        ("/adjust crop=0.1,0.1,0.9,0.9 saturation=0", "adjust_image",
         {"image": CUR, "crop": [0.1, 0.1, 0.9, 0.9], "saturation": 0}),
        ("/reframe 16:9 zoom=0.8 wide", "reframe_image", {"image": CUR, "aspect_ratio": "16:9", "zoom": 0.8, "shot": "wide"}),
        ("/edit add a red scarf --ref img_aaaaaaaaaaaa", "edit_image",
         {"image": CUR, "instruction": "add a red scarf", "references": ["img_aaaaaaaaaaaa"]}),
        ("/revert img_bbbbbbbbbbbb", "revert", {"image": "img_bbbbbbbbbbbb"}),
        ("/branch img_bbbbbbbbbbbb", "revert", {"image": "img_bbbbbbbbbbbb"}),
    ],
)
def test_commands_become_valid_tool_calls(text, tool, args):
    name, got = parse_slash(text, current=CUR)
    assert name == tool
    assert got == args
    validate_call(name, got)  # the contract accepts what the command produced


def test_generate_options():
    name, args = parse_slash("/generate two owls --count 2 --seed=7 --negative blurry", current=None)
    assert args == {"prompt": "two owls", "count": 2, "seed": 7, "negative_prompt": "blurry"}


def test_errors_are_typed_and_readable():
    with pytest.raises(ToolArgumentError, match="unknown command /paint"):
        parse_slash("/paint a cat")
    with pytest.raises(ToolArgumentError, match="no current image"):
        parse_slash("/relight warm", current=None)
    with pytest.raises(ToolArgumentError, match="did not understand"):
        parse_slash("/adjust brighter please", current=CUR)
    with pytest.raises(ToolArgumentError, match="needs a value"):
        parse_slash("/generate a cat --aspect", current=None)


def test_is_slash():
    assert is_slash("/undo") and is_slash("  /generate x")
    assert not is_slash("make it 1/2 as bright") and not is_slash("/")
