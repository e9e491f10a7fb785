"""The tool contract refuses what no setting can be: NaN, infinities, ints beyond their bounds,
texts beyond their lengths; raw arguments are kept storable until they are validated."""

from __future__ import annotations

import math

import ormsgpack
import pytest

from tools.errors import ToolArgumentError
from tools.schemas import TOOL_MODELS, storable, validate_call

REF = "img_0123456789ab"


@pytest.mark.parametrize("seed", [10**30, 2**63, 2**32, -1, float("nan"), float("inf"), "1e400"])
def test_a_seed_out_of_range_is_a_readable_argument_error(seed):
    with pytest.raises(ToolArgumentError, match=r"^generate_image: seed must be a whole number from 0 to 4294967295 "):
        validate_call("generate_image", {"prompt": "x", "seed": seed})


def test_the_largest_seed_is_accepted():
    assert validate_call("generate_image", {"prompt": "x", "seed": 2**32 - 1}).seed == 2**32 - 1


def _float_fields():
    for name, model in TOOL_MODELS.items():
        for field, info in model.model_fields.items():
            if "float" in str(info.annotation):
                yield name, field


FLOAT_FIELDS = list(_float_fields())


def test_every_float_field_of_the_contract_is_covered():
    assert {f for _, f in FLOAT_FIELDS} >= {"intensity", "zoom", "camera_azimuth", "camera_elevation",
                                            "exposure_ev", "contrast", "saturation", "rotate_deg", "crop"}


@pytest.mark.parametrize("tool, field", FLOAT_FIELDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), "nan", "Infinity"])
def test_nan_and_infinities_are_refused_in_every_float_field(tool, field, bad):
    value = [0.1, 0.1, bad, 0.9] if field == "crop" else bad
    args = {"image": REF, field: value}
    with pytest.raises(ToolArgumentError, match=rf"^{tool}: {field} must be "):
        validate_call(tool, args)


@pytest.mark.parametrize("tool, field, limit", [
    ("generate_image", "prompt", 2000), ("generate_image", "negative_prompt", 1000),
    ("edit_image", "instruction", 2000), ("edit_image", "region", 200), ("relight_image", "description", 300),
])
def test_text_arguments_have_a_length_limit(tool, field, limit):
    base = {"generate_image": {"prompt": "x"}, "edit_image": {"image": REF, "instruction": "x"},
            "relight_image": {"image": REF}}[tool]
    validate_call(tool, {**base, field: "y" * limit})
    too_long = rf"^{tool}: {field} must be at most {limit} characters \(got {limit + 1:,}\)$"
    with pytest.raises(ToolArgumentError, match=too_long):
        validate_call(tool, {**base, field: "y" * (limit + 1)})


def test_storable_keeps_what_a_checkpoint_can_hold_and_turns_the_rest_into_text():
    raw = {"prompt": "x", "seed": 10**30, "count": 2, "zoom": float("nan"), "crop": [0.1, float("inf"), 0.5, 1],
           "flag": True, "huge": 10**5000, "nested": {"n": -(2**63) - 1}}
    kept = storable(raw)
    assert kept == {"prompt": "x", "seed": str(10**30), "count": 2, "zoom": "nan", "crop": [0.1, "inf", 0.5, 1],
                    "flag": True, "huge": "<a 16610-bit integer>", "nested": {"n": str(-(2**63) - 1)}}
    ormsgpack.packb(kept)  # what failed before: "Integer exceeds 64-bit range"
    with pytest.raises(TypeError):
        ormsgpack.packb(raw)
    assert storable({"seed": 7, "zoom": 1.5}) == {"seed": 7, "zoom": 1.5}
    # the text form is still refused by the contract, with the bound in the message
    with pytest.raises(ToolArgumentError, match="seed must be a whole number from 0 to 4294967295"):
        validate_call("generate_image", storable({"prompt": "x", "seed": 10**30}))
    with pytest.raises(ToolArgumentError, match=r"zoom must be a number from 0.5 to 3 \(got 'nan'\)"):
        validate_call("reframe_image", storable({"image": REF, "zoom": math.nan}))


@pytest.mark.parametrize("tool, args, message", [
    ("generate_image", {}, "generate_image: prompt is required"),
    ("generate_image", {"prompt": ""}, "generate_image: prompt must not be empty"),
    ("generate_image", {"prompt": "x", "aspect_ratio": "5:1"},
     "generate_image: aspect_ratio must be one of 1:1, 16:9, 9:16, 4:3, 3:4, 3:2, 2:3 (got '5:1')"),
    ("relight_image", {"image": REF, "softness": "mushy"},
     "relight_image: softness must be one of hard, soft (got 'mushy')"),
    ("relight_image", {"image": REF, "intensity": 5},
     "relight_image: intensity must be a number from 0.2 to 2 (got 5)"),
    ("relight_image", {"image": "photo.png"},
     "relight_image: image must be an image ref like img_3f9a2c1b (got 'photo.png')"),
    ("edit_image", {"image": REF, "instruction": "x", "preserve_identity": "maybe"},
     "edit_image: preserve_identity must be true or false (got 'maybe')"),
    ("edit_image", {"image": REF, "instruction": "x", "references": [REF] * 4},
     "edit_image: references takes at most 3 items (got 4)"),
    ("adjust_image", {"image": REF, "crop": [0.1, 0.2, 0.3]},
     "adjust_image: crop must be 4 numbers ([left, top, right, bottom] as fractions 0-1) (got [0.1, 0.2, 0.3])"),
    ("adjust_image", {"image": REF, "crop": [0.5, 0.2, 0.3, 0.9]},
     "adjust_image: crop must be [left, top, right, bottom] with 0 <= left < right <= 1 and 0 <= top < bottom <= 1"),
    ("adjust_image", {"image": REF, "exposure_ev": "x" * 100},
     "adjust_image: exposure_ev must be a number from -3 to 3 (got '" + "x" * 36 + "...)"),
    ("reframe_image", {"image": REF, "zoom": 9, "shot": "far"},
     "reframe_image: zoom must be a number from 0.5 to 3 (got 9); "
     "shot must be one of close-up, medium, wide (got 'far')"),
])
def test_argument_errors_name_the_argument_and_what_it_takes(tool, args, message):
    with pytest.raises(ToolArgumentError) as err:
        validate_call(tool, args)
    assert str(err.value) == message
