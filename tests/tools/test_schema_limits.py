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
    with pytest.raises(ToolArgumentError, match=r"^generate_image: seed: "):
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
    with pytest.raises(ToolArgumentError, match=rf"^{tool}: {field}"):
        validate_call(tool, args)


@pytest.mark.parametrize("tool, field, limit", [
    ("generate_image", "prompt", 2000), ("generate_image", "negative_prompt", 1000),
    ("edit_image", "instruction", 2000), ("edit_image", "region", 200), ("relight_image", "description", 300),
])
def test_text_arguments_have_a_length_limit(tool, field, limit):
    base = {"generate_image": {"prompt": "x"}, "edit_image": {"image": REF, "instruction": "x"},
            "relight_image": {"image": REF}}[tool]
    validate_call(tool, {**base, field: "y" * limit})
    with pytest.raises(ToolArgumentError, match=rf"{field}: String should have at most {limit} characters"):
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
    with pytest.raises(ToolArgumentError, match="seed: Input should be less than or equal to 4294967295"):
        validate_call("generate_image", storable({"prompt": "x", "seed": 10**30}))
    with pytest.raises(ToolArgumentError, match="zoom: Input should be a finite number"):
        validate_call("reframe_image", storable({"image": REF, "zoom": math.nan}))
