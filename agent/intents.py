"""What the planner writes: the tools in the words people use, translated to the contract by code.

The contract (`TOOLS.md`, `tools.schemas`) speaks in signed degrees, kelvin and crop boxes; a
small model writes those signs from habit. The planner therefore sees friendlier arguments and
this module turns them into contract arguments, so every sign and unit convention is code:

- images: `image` is optional ("#2", "original", "previous" or left out); `agent.resolver`
  decides the ref from the conversation's facts;
- relight: `light` warm / neutral / cool (or `kelvin`), `strength` weaker / stronger relative to
  the light that made the image being relit (a "stronger" on a relit image relights its source
  again, stronger: the light is replaced, not stacked);
- reframe: `orbit` toward the subject's left or right plus positive `orbit_degrees`, `view`
  (from above, top-down, from below, eye level), `zoom` in / out in words;
- adjust: `rotate` clockwise / counter-clockwise plus positive `rotate_degrees`, `white_balance`
  warmer / cooler (or `white_balance_k`), `cut_left` ... `cut_bottom` (the fraction to cut off each side) for crop.

Contract arguments are accepted as they are too (a model or a client that writes
`camera_azimuth` is not wrong). `to_contract` raises `ToolArgumentError` with one readable line (`agent.resolver.PlanError` when an
image cannot be resolved).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from agent.resolver import Facts, resolve_images
from tools.errors import ToolArgumentError
from tools.schemas import (AspectRatio, Direction, Shot, Softness, describe_validation_error, function_schemas,
                           validate_call)

ImageChoice = str | None
_IMAGE = Field(None, json_schema_extra={"x-image": True})  # a grammar limits it to the chat's numbers

Zoom = Literal["in", "out", "a bit in", "a bit out", "far in", "far out"]
# the shapes in the words people use or as a ratio the user wrote; a word comes first in its
# value, so the first token a model writes already tells the shapes apart ("1:1" and "16:9" share
# their first); the ratio is read from the value ("tall (phone wallpaper...)" -> 9:16)
Shape = Literal["tall (phone wallpaper, story, reel)", "wide (banner, desktop, TV)", "square", "portrait",
                "landscape", "9:16", "16:9", "1:1", "2:3", "3:4", "3:2", "4:3"]
_RATIO_IN = re.compile(r"(\d{1,2})\s*[:x/×]\s*(\d{1,2})")
_SHAPE_WORDS = {"square": "1:1", "tall": "9:16", "vertical": "9:16", "phone": "9:16", "story": "9:16",
                "wide": "16:9", "widescreen": "16:9", "banner": "16:9", "portrait": "2:3", "landscape": "3:2",
                "horizontal": "3:2"}


def _shape(value: Any) -> Any:
    """A shape in words or as a ratio -> the contract's ratio ("tall (phone...)" -> "9:16")."""
    if not isinstance(value, str):
        return value
    m = _RATIO_IN.search(value)
    if m:
        return f"{int(m.group(1))}:{int(m.group(2))}"
    for word in re.findall(r"[a-z]+", value.lower()):
        if word in _SHAPE_WORDS:
            return _SHAPE_WORDS[word]
    return value


ShapeArg = Annotated[AspectRatio, BeforeValidator(_shape)]
_SHAPE_FIELD = Field(None, json_schema_extra={"enum": list(get_args(Shape))})
Strength = Literal["much weaker", "weaker", "a bit weaker", "a bit stronger", "stronger", "much stronger"]
Warmth = Literal["a bit warmer", "warmer", "much warmer", "a bit cooler", "cooler", "much cooler"]
View = Literal["from above (high angle)", "top-down (overhead)", "from below (low angle)", "eye level"]

ZOOM = {"in": 1.5, "a bit in": 1.2, "far in": 2.0, "out": 0.7, "a bit out": 0.85, "far out": 0.5}
STRENGTH = {"much weaker": 0.5, "weaker": 0.7, "a bit weaker": 0.85, "a bit stronger": 1.2, "stronger": 1.4,
            "much stronger": 1.8}
LIGHT_K = {"warm": 3200, "neutral": 5500, "cool": 7500}
WHITE_BALANCE_K = {"a bit warmer": 5800, "warmer": 5200, "much warmer": 4400, "a bit cooler": 7200, "cooler": 7800,
                   "much cooler": 9000}
VIEW_DEG = {"from above (high angle)": 30.0, "top-down (overhead)": 60.0, "from below (low angle)": -30.0,
            "eye level": 0.0}


def _view(value: Any) -> Any:
    """A viewpoint in words -> one of `View` ("low angle", "from below" -> "from below (low angle)")."""
    if not isinstance(value, str):
        return value
    text = value.lower()
    for choice in get_args(View):
        if text == choice or text in choice.replace("(", "").replace(")", "").split("  "):
            return choice
    if any(w in text for w in ("top-down", "top down", "overhead", "bird", "flat lay")):
        return "top-down (overhead)"
    if any(w in text for w in ("below", "low", "worm")):
        return "from below (low angle)"
    if any(w in text for w in ("above", "high")):
        return "from above (high angle)"
    if "eye" in text:
        return "eye level"
    return value
ORBIT_DEFAULT_DEG = 30.0
ROTATE_DEFAULT_DEG = 90.0


class _Plan(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PlanGenerate(_Plan):
    """A brand-new picture from words."""

    prompt: str = Field(min_length=1, max_length=2000, description="what to draw, in English")
    shape: ShapeArg | None = _SHAPE_FIELD
    count: int | None = Field(None, ge=1, le=4)
    negative_prompt: str | None = Field(None, max_length=1000)


class PlanEdit(_Plan):
    """Change what is in the picture: add, remove, replace, restyle, expression, background."""

    # the order the planner writes them (a grammar keeps it): the change first, then what it brings
    # in, then where to: a small model names the roles better once it has written the change
    instruction: str = Field(min_length=1, max_length=2000)
    bring_in: list[str] | None = Field(None, max_length=3, description="other photos whose people or things are added",
                                      json_schema_extra={"x-images": True})
    scene: ImageChoice = Field(None, description="the photo whose place and background are kept",
                               json_schema_extra={"x-image": True})
    region: str | None = Field(None, max_length=200)
    becomes_someone_else: bool | None = Field(None, description="true only if a person must become unrecognizable")


class PlanRelight(_Plan):
    """Change only the light."""

    image: ImageChoice = _IMAGE
    direction: Direction | None = None
    light: Literal["warm", "neutral", "cool"] | None = None
    kelvin: int | None = Field(None, ge=1500, le=10000)
    strength: Strength | None = None
    softness: Softness | None = None
    description: str | None = Field(None, max_length=300)


class PlanReframe(_Plan):
    """Change the camera or canvas."""

    image: ImageChoice = _IMAGE
    shape: ShapeArg | None = _SHAPE_FIELD
    zoom: Zoom | None = None
    orbit: Literal["left", "right"] | None = Field(None, description="toward the subject's own left or right")
    orbit_degrees: float | None = Field(None, ge=0, le=180)
    view: Annotated[View, BeforeValidator(_view)] | None = None
    view_degrees: float | None = Field(None, ge=0, le=60)
    shot: Shot | None = None


class PlanAdjust(_Plan):
    """Exact photo settings."""

    image: ImageChoice = _IMAGE
    exposure_ev: float | None = Field(None, ge=-3, le=3)
    white_balance: Warmth | None = None
    white_balance_k: int | None = Field(None, ge=1500, le=15000)
    contrast: float | None = Field(None, ge=0, le=3)
    saturation: float | None = Field(None, ge=0, le=3)
    rotate: Literal["clockwise", "counter-clockwise"] | None = None
    rotate_degrees: float | None = Field(None, ge=0, le=360)
    cut_left: float | None = Field(None, ge=0, lt=1, description="fraction of the width to cut off the left")
    cut_top: float | None = Field(None, ge=0, lt=1)
    cut_right: float | None = Field(None, ge=0, lt=1)
    cut_bottom: float | None = Field(None, ge=0, lt=1)


class PlanRevert(_Plan):
    """Go back to an earlier version."""

    image: ImageChoice = Field(None, description='the version to go back to ("#1", "original"); leave out for undo',
                               json_schema_extra={"x-image": True})


PLAN_MODELS: dict[str, type[_Plan]] = {
    "generate_image": PlanGenerate,
    "edit_image": PlanEdit,
    "relight_image": PlanRelight,
    "reframe_image": PlanReframe,
    "adjust_image": PlanAdjust,
    "revert": PlanRevert,
}

# contract arguments a planned call may carry instead of the friendly ones
_CONTRACT_KEYS = {
    "generate_image": {"aspect_ratio", "seed"},
    "edit_image": {"image", "references", "preserve_identity"},
    "relight_image": {"color_temperature", "intensity"},
    "reframe_image": {"aspect_ratio", "zoom", "camera_azimuth", "camera_elevation"},
    "adjust_image": {"rotate_deg", "crop"},
}
# friendly names of contract arguments that mean the same thing
_RENAMED = {"edit_image": {"scene": "image", "bring_in": "references"}}
_DEGREES = ("orbit_degrees", "view_degrees", "rotate_degrees")


def _choices(model: type[BaseModel]) -> dict[str, tuple[str, ...]]:
    """The word choices of each field (its Literal values)."""
    out = {}
    for name, info in model.model_fields.items():
        values: list[str] = []
        stack = [info.annotation]
        while stack:
            t = stack.pop()
            if getattr(t, "__origin__", None) is Literal or str(getattr(t, "__origin__", "")) == "typing.Literal":
                values.extend(v for v in get_args(t) if isinstance(v, str))
            else:
                stack.extend(get_args(t))
        if values:
            out[name] = tuple(values)
    return out


def _lenient(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """Words the planner put in the wrong field of the same call move to the one field whose
    choices they are ("light": "soft" is a softness); a signed number of degrees whose sense is
    given in words counts by its size; a strength word written as `intensity` is a strength."""
    choices = _choices(PLAN_MODELS[name])
    out = dict(args)
    for key, value in args.items():
        if key not in choices or not isinstance(value, str) or value in choices[key]:
            continue
        homes = [k for k, vals in choices.items() if k != key and value.lower() in vals and k not in out]
        if len(homes) == 1:
            out[homes[0]] = value.lower()
            del out[key]
    light = out.get("light")
    if name == "relight_image" and isinstance(light, str) and light.lower() not in choices["light"]:
        # a kind of light in the colour's place ("light": "candlelight") is what the light looks like
        out.setdefault("description", light)
        del out["light"]
    for key in _DEGREES:
        if isinstance(out.get(key), (int, float)) and not isinstance(out[key], bool):
            out[key] = abs(out[key]) or None
    if isinstance(out.get("intensity"), str) and out["intensity"].lower() in STRENGTH and "strength" not in out:
        out["strength"] = out.pop("intensity").lower()
    return {k: v for k, v in out.items() if v is not None}


def plan_json_schemas() -> list[dict[str, Any]]:
    """OpenAI-style function schemas of what the planner writes (the friendly arguments)."""
    return function_schemas(PLAN_MODELS)


def _read(name: str, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a planned call into friendly arguments (validated) and contract ones (kept as given)."""
    model = PLAN_MODELS[name]
    args = _lenient(name, args)
    contract = {k: args[k] for k in _CONTRACT_KEYS.get(name, set()) if k in args}
    friendly = {k: v for k, v in args.items() if k not in contract}
    if name == "reframe_image" and isinstance(contract.get("zoom"), str):
        friendly["zoom"] = contract.pop("zoom")  # "zoom": "out" is the friendly one
    try:
        planned = model.model_validate(friendly).model_dump(exclude_none=True)
    except ValidationError as err:  # the same sentences as the contract's errors
        raise ToolArgumentError(f"{name}: {describe_validation_error(err, model)}") from None
    return planned, contract


def _clamp(x: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, x))


def to_contract(name: str, args: dict[str, Any], facts: Facts) -> dict[str, Any]:
    """A planned call's arguments as contract arguments (validated by `tools.schemas.validate_call`;
    defaults are not filled in: the call stays as the planner meant it)."""
    if name not in PLAN_MODELS:
        raise ToolArgumentError(f"unknown tool {name!r}; available: {', '.join(PLAN_MODELS)}")
    if not isinstance(args, dict):
        raise ToolArgumentError(f"{name}: arguments must be a JSON object")
    planned, out = _read(name, args)
    for friendly_key, key in _RENAMED.get(name, {}).items():
        if friendly_key in planned:
            planned.setdefault(key, planned.pop(friendly_key)) if key not in out else planned.pop(friendly_key)
    if "shape" in planned:
        out.setdefault("aspect_ratio", planned.pop("shape"))
    if name == "edit_image":
        if "image" in out:  # a contract `image` (a ref or "#n") is resolved like the friendly one
            planned.setdefault("image", out.pop("image"))
        if "references" in out:
            planned.setdefault("references", out.pop("references"))
        if planned.pop("becomes_someone_else", False) and "preserve_identity" not in out:
            out["preserve_identity"] = False
    if name != "generate_image":
        planned = resolve_images(name, planned, facts)
    if name == "relight_image":
        kelvin = planned.pop("kelvin", None)
        light = planned.pop("light", None)
        if "color_temperature" not in out and (kelvin or light):
            out["color_temperature"] = int(kelvin or LIGHT_K[light])
        strength = planned.pop("strength", None)
        if strength and "intensity" not in out:
            source = facts.get(planned["image"])
            base = 1.0
            if source is not None and source.tool == "relight_image" and source.parent and facts.get(source.parent):
                # the light that made this image, again from its source, stronger or weaker
                before = {k: v for k, v in source.args.items() if k != "image" and v is not None}
                base = float(before.get("intensity") or 1.0)
                planned["image"] = source.parent
                for key, value in before.items():
                    if key not in planned and key not in out and key != "intensity":
                        out[key] = value
            out["intensity"] = round(_clamp(base * STRENGTH[strength], 0.2, 2.0), 2)
    elif name == "reframe_image":
        zoom = planned.pop("zoom", None)
        if zoom and "zoom" not in out:
            out["zoom"] = ZOOM[zoom]
        orbit, degrees = planned.pop("orbit", None), planned.pop("orbit_degrees", None)
        if orbit and "camera_azimuth" not in out:
            out["camera_azimuth"] = (1 if orbit == "left" else -1) * float(degrees or ORBIT_DEFAULT_DEG)
        view, tilt = planned.pop("view", None), planned.pop("view_degrees", None)
        if view and "camera_elevation" not in out:
            sign = 1 if VIEW_DEG[view] >= 0 else -1
            out["camera_elevation"] = sign * float(tilt) if tilt and view != "eye level" else VIEW_DEG[view]
    elif name == "adjust_image":
        rotate, degrees = planned.pop("rotate", None), planned.pop("rotate_degrees", None)
        if rotate and "rotate_deg" not in out:
            out["rotate_deg"] = (-1 if rotate == "clockwise" else 1) * float(degrees or ROTATE_DEFAULT_DEG)
        elif degrees and "rotate_deg" not in out:
            raise ToolArgumentError("adjust_image: rotate_degrees needs rotate: clockwise or counter-clockwise")
        warmth = planned.pop("white_balance", None)
        if warmth and "white_balance_k" not in planned:
            planned["white_balance_k"] = WHITE_BALANCE_K[warmth]
        cut = {side: planned.pop(f"cut_{side}", None) or 0 for side in ("left", "top", "right", "bottom")}
        if any(cut.values()) and "crop" not in out:
            box = [cut["left"], cut["top"], 1 - cut["right"], 1 - cut["bottom"]]
            if box[0] >= box[2] or box[1] >= box[3]:
                raise ToolArgumentError("adjust_image: cut takes off the whole picture; give the fraction to remove "
                                "from each side (e.g. bottom: 0.33)")
            if box != [0, 0, 1, 1]:
                out["crop"] = [round(x, 4) for x in box]
    contract = {**planned, **out}
    validate_call(name, contract)  # ToolArgumentError with the contract's own line
    return contract
