"""The tool contract of ../shared/TOOLS.md as pydantic models.

These models are the single source of truth for argument names, enums and ranges: the planner's
tool schemas, MCP tool definitions and validation of every call are derived from them.
"""

from __future__ import annotations

import math
import re
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from tools.errors import ToolArgumentError

REF_PATTERN = r"^img_[0-9a-f]{8,64}$"
_REF_RE = re.compile(REF_PATTERN)

_RATIO_RE = re.compile(r"^\s*(\d{1,2})\s*[:x/×]\s*(\d{1,2})\s*$", re.IGNORECASE)
_DIRECTION_WORDS = {"upper": "top", "above": "top", "overhead": "top", "lower": "bottom", "below": "bottom",
                    "under": "bottom", "behind": "back", "rear": "back", "backlight": "back",
                    "frontal": "front", "ahead": "front"}


def _ratio(value: Any) -> Any:
    """'16x9', '16/9', ' 16 : 9 ' -> '16:9' (any other value is left for the enum to judge)."""
    m = _RATIO_RE.match(value) if isinstance(value, str) else None
    return f"{int(m.group(1))}:{int(m.group(2))}" if m else value


def _direction(value: Any) -> Any:
    """'upper left', 'Top_Left', 'from behind' -> 'top-left', 'top-left', 'back'."""
    if not isinstance(value, str):
        return value
    words = [w for w in re.split(r"[\s_\-]+", value.strip().lower()) if w and w not in ("from", "the", "side")]
    words = [_DIRECTION_WORDS.get(w, w) for w in words]
    return "-".join(words) if words else value


_NUMBER_RE = re.compile(r"[-+]?\d+(?:\.\d+)?")


def _signed_degrees(positive: tuple[str, ...], negative: tuple[str, ...]):
    """A degrees field that also reads words: `"45 left"`, `"to the right 30"`, `"90 clockwise"`."""
    def read(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = re.sub(r"\b(counter|anti)-clockwise", "counterclockwise", value.strip().lower())
        number = _NUMBER_RE.search(text)
        if not number:
            return value  # left for the number type to refuse
        degrees, words = float(number.group()), set(re.findall(r"[a-z]+", text))
        if words & set(positive):
            return abs(degrees)
        if words & set(negative):
            return -abs(degrees)
        return degrees
    return BeforeValidator(read)


_AspectRatioValue = Literal["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"]
_DirectionValue = Literal["left", "right", "front", "back", "top", "bottom", "top-left", "top-right"]
ASPECT_RATIOS: tuple[str, ...] = get_args(_AspectRatioValue)
DIRECTIONS: tuple[str, ...] = get_args(_DirectionValue)
AspectRatio = Annotated[_AspectRatioValue, BeforeValidator(_ratio)]
Direction = Annotated[_DirectionValue, BeforeValidator(_direction)]
Softness = Literal["hard", "soft"]
Shot = Literal["close-up", "medium", "wide"]

ImageRef = Annotated[
    str,
    Field(pattern=REF_PATTERN, description="Short id of a stored image version, e.g. img_3f9a2c1b"),
]


def is_ref(value: str) -> bool:
    return bool(_REF_RE.match(value or ""))


class ToolArgs(BaseModel):
    # NaN and infinities are no settings (and not JSON); every int of the contract has bounds
    # (seed below 2**32), so whatever validates fits the checkpoint (msgpack) and SQLite.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class GenerateImage(ToolArgs):
    """Create brand-new image(s) from a text description, when there is nothing to start from."""

    prompt: str = Field(min_length=1, max_length=2000, description="What to draw, in detail")
    aspect_ratio: AspectRatio = Field(
        "1:1", description="width:height: 1:1 square; 9:16 tall (phone wallpaper, story, reel), 2:3 or 3:4 portrait; "
        "16:9 wide (banner, desktop), 3:2 or 4:3 landscape"
    )
    count: int = Field(1, ge=1, le=4, description="How many variations (1-4)")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Seed for reproducibility")
    negative_prompt: str | None = Field(None, max_length=1000, description="What to avoid")


class EditImage(ToolArgs):
    """Change what is in an image: add, remove, replace or restyle things, people, clothes,
    expression or background; faces stay the same person."""

    image: ImageRef = Field(description="the photo whose scene is kept and changed")
    instruction: str = Field(min_length=1, max_length=2000, description="What to change")
    references: list[ImageRef] = Field(
        default_factory=list, max_length=3,
        description="other photos whose people or things are brought into that scene",
    )
    preserve_identity: bool = Field(True, description="Keep every face the same person")
    region: str | None = Field(None, max_length=200, description='What to change, e.g. "background"')


class RelightImage(ToolArgs):
    """Change only the lighting (sun, lamp, candle, neon, moonlight; direction, colour, mood);
    content, faces and geometry stay."""

    image: ImageRef
    direction: Direction | None = Field(
        None,
        description="Where the light comes from: left, right, front, back (backlight), top, bottom, "
                    "top-left or top-right",
    )
    color_temperature: int | None = Field(
        None, ge=1500, le=10000, description="Kelvin: warm < 4000 < neutral < 6500 < cool"
    )
    intensity: float | None = Field(None, ge=0.2, le=2.0, description="1 = unchanged")
    softness: Softness | None = Field(
        None,
        description="hard: crisp, sharp-edged shadows (direct sun, a bare bulb); soft: diffuse light, gentle shadows",
    )
    description: str | None = Field(None, max_length=300, description='e.g. "golden hour sun", "candlelight"')


class ReframeImage(ToolArgs):
    """Move the camera or extend the canvas: a new aspect ratio by outpainting, zoom in or out,
    orbit around the subject, look from above or below (never rotates the picture itself)."""

    image: ImageRef
    aspect_ratio: AspectRatio | None = Field(
        None, description="width:height: 1:1 square; landscape is wider than tall (16:9, 3:2, 4:3), portrait taller "
        "(9:16, 2:3, 3:4)"
    )
    zoom: float | None = Field(None, ge=0.5, le=3.0, description="< 1 zooms out and outpaints, > 1 zooms in")
    camera_azimuth: Annotated[float | None, _signed_degrees(("left",), ("right",))] = Field(
        None, ge=-180, le=180,
        description="Degrees the camera orbits: positive toward the subject's left, negative toward the subject's right",
    )
    camera_elevation: float | None = Field(
        None, ge=-60, le=60, description="Degrees; positive looks down from above"
    )
    shot: Shot | None = Field(
        None,
        description="How much of the subject the frame shows: close-up (the face), medium (waist up), "
                    "wide (the whole figure and its surroundings)",
    )


class AdjustImage(ToolArgs):
    """Exact photo settings, no generative model: brightness (exposure stops), white balance (a
    colour cast, kelvin), contrast, saturation, rotate or straighten the picture, crop."""

    image: ImageRef
    exposure_ev: float | None = Field(None, ge=-3, le=3, description="Exposure change in stops")
    white_balance_k: int | None = Field(
        None, ge=1500, le=15000, description="Target white balance in kelvin (6500 = neutral; lower = warmer)"
    )
    contrast: float | None = Field(None, ge=0.0, le=3.0, description="1 = unchanged")
    saturation: float | None = Field(None, ge=0.0, le=3.0, description="1 = unchanged, 0 = greyscale")
    rotate_deg: Annotated[float | None, _signed_degrees(("counterclockwise", "left"), ("clockwise", "right"))] = Field(
        None, ge=-360, le=360, description="Counter-clockwise degrees"
    )
    crop: tuple[float, float, float, float] | None = Field(
        None, description="[left, top, right, bottom] as fractions 0-1"
    )

    @field_validator("crop")
    @classmethod
    def _crop_box(cls, box):
        if box is None:
            return box
        left, top, right, bottom = box
        if not (0 <= left < right <= 1 and 0 <= top < bottom <= 1):
            raise ValueError("crop must be [left, top, right, bottom] with 0 <= left < right <= 1 and 0 <= top < bottom <= 1")
        return box


class CropBox(BaseModel):
    """`adjust_image`'s `crop` as an object, the view for chat apps whose function-calling dialect
    rejects a fixed-length array (`prefixItems`), such as MCP clients: the same box as the
    contract's `[left, top, right, bottom]`, which `client_arguments` turns it back into."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    left: float = Field(ge=0, le=1, description="Left edge of the part kept, as a fraction of the width "
                                                "(0: the left side)")
    top: float = Field(ge=0, le=1, description="Top edge of the part kept, as a fraction of the height (0: the top)")
    right: float = Field(ge=0, le=1, description="Right edge of the part kept, as a fraction of the width "
                                                 "(1: the right side); more than left")
    bottom: float = Field(ge=0, le=1, description="Bottom edge of the part kept, as a fraction of the height "
                                                  "(1: the bottom); more than top")

    @model_validator(mode="after")
    def _edges_in_order(self):
        if not (self.left < self.right and self.top < self.bottom):
            raise ValueError(f"left must be less than right and top less than bottom (got left {self.left}, "
                             f"right {self.right}, top {self.top}, bottom {self.bottom})")
        return self


# contract arguments that other chat apps see as an object: name -> (the object's model, its description)
CLIENT_OBJECTS: dict[str, tuple[type[BaseModel], str]] = {
    "crop": (CropBox, "The part of the picture to keep: its edges as fractions 0-1 of the width and height"),
}


class Revert(ToolArgs):
    """Make an earlier version the current one (undo, go back, branch from there)."""

    image: ImageRef = Field(description="the earlier version to go back to, never the current one")


TOOL_MODELS: dict[str, type[ToolArgs]] = {
    "generate_image": GenerateImage,
    "edit_image": EditImage,
    "relight_image": RelightImage,
    "reframe_image": ReframeImage,
    "adjust_image": AdjustImage,
    "revert": Revert,
}


def validate_call(name: str, args: dict[str, Any] | None) -> ToolArgs:
    """Validate a tool call against the contract; raise ToolArgumentError with a readable line."""
    model = TOOL_MODELS.get(name)
    if model is None:
        raise ToolArgumentError(f"unknown tool {name!r}; available: {', '.join(TOOL_MODELS)}")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ToolArgumentError(f"{name}: arguments must be a JSON object, got {type(args).__name__}")
    try:
        return model.model_validate(args)
    except ValidationError as err:
        raise ToolArgumentError(f"{name}: {describe_validation_error(err, model)}") from None


def describe_validation_error(err: ValidationError, model: type[BaseModel]) -> str:
    """A pydantic error of `model` as sentences a person reads, one per problem, each naming the
    argument and what it takes, from the error (type, loc, ctx) and the field's declaration:
    "exposure_ev must be a number from -3 to 3 (got 'banana')",
    "direction must be one of left, right, ... (got 'sideways')". Unknown kinds keep pydantic's text."""
    problems: list[str] = []
    for e in err.errors():
        line = _describe_problem(e, model)
        if line not in problems:
            problems.append(line)
    return "; ".join(problems)


_NUMBER_ERRORS = {"float_parsing", "float_type", "int_parsing", "int_type", "int_from_float", "finite_number",
                  "greater_than", "greater_than_equal", "less_than", "less_than_equal", "int_parsing_size"}


def _describe_problem(e: dict[str, Any], model: type[BaseModel]) -> str:
    loc = [str(p) for p in e.get("loc", ())]
    kind, ctx = e.get("type", ""), e.get("ctx") or {}
    key = loc[0] if loc else "arguments"
    field = model.model_fields.get(key)
    got = f" (got {_shown(e.get('input'))})"
    if kind == "missing" and len(loc) == 1:
        return f"{key} is required"
    if kind == "extra_forbidden":
        return f"{key} is not an argument here; the arguments are {', '.join(model.model_fields)}"
    if field is None:
        return f"{'.'.join(loc) or 'arguments'}: {e.get('msg', 'invalid')}"
    kinds = _kinds(field.annotation)
    if tuple in kinds and (len(loc) > 1 or kind == "tuple_type"):
        size = next((len(get_args(a)) for a in _members(field.annotation) if get_origin(a) is tuple), 0)
        what = f" ({field.description})" if field.description else ""
        return f"{key} must be {size} numbers{what}{got}"
    if kind == "value_error":
        text = str(ctx.get("error") or e.get("msg", "")).removeprefix("Value error, ")
        return text if text.startswith(key) else f"{key}: {text}"
    if kind == "literal_error":
        return f"{key} must be one of {', '.join(map(str, _choices(field.annotation)))}{got}"
    if kind in _NUMBER_ERRORS:
        whole = "int" in kind or (int in kinds and float not in kinds)
        return f"{key} must be {'a whole number' if whole else 'a number'}{_range(field)}{got}"
    if kind.startswith("bool"):
        return f"{key} must be true or false{got}"
    if kind == "string_too_long":
        return f"{key} must be at most {ctx.get('max_length')} characters (got {len(str(e.get('input', ''))):,})"
    if kind == "string_too_short":
        least = ctx.get("min_length", 1)
        return f"{key} must not be empty" if least == 1 else f"{key} must be at least {least} characters{got}"
    if kind == "string_pattern_mismatch":
        pattern = ctx.get("pattern")
        like = "an image ref like img_3f9a2c1b" if pattern == REF_PATTERN else f"text matching {pattern}"
        return f"{key}{' items' if len(loc) > 1 else ''} must be {like}{got}"
    if kind == "too_long":
        return f"{key} takes at most {ctx.get('max_length')} items (got {ctx.get('actual_length')})"
    if kind == "string_type":
        return f"{key} must be text{got}"
    return f"{'.'.join(loc)}: {e.get('msg', 'invalid')}"


def _members(annotation: Any) -> list[Any]:
    """The types an annotation allows, Optional, unions and Annotated unwrapped."""
    if get_origin(annotation) is Annotated:
        return _members(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        return [m for a in get_args(annotation) for m in _members(a)]
    return [annotation]


def _kinds(annotation: Any) -> set[Any]:
    return {get_origin(a) or a for a in _members(annotation)}


def _choices(annotation: Any) -> list[Any]:
    return [c for a in _members(annotation) if get_origin(a) is Literal for c in get_args(a)]


def _range(field: Any) -> str:
    """" from -3 to 3", " at least 0", " above 0 and at most 4"... or "" from a field's bounds."""
    bounds = {k: _number(getattr(m, k)) for m in field.metadata for k in ("ge", "gt", "le", "lt")
              if getattr(m, k, None) is not None}
    if "ge" in bounds and "le" in bounds:
        return f" from {bounds['ge']} to {bounds['le']}"
    words = {"ge": "at least", "gt": "above", "le": "at most", "lt": "below"}
    parts = [f"{words[k]} {v}" for k, v in bounds.items()]
    return (" " + " and ".join(parts)) if parts else ""


def _number(value: Any) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _shown(value: Any) -> str:
    """A bad value as the error quotes it: text in quotes, at most ~40 characters."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def storable(value: Any) -> Any:
    """Raw call arguments as the turn's state may hold them before they are validated: an int
    beyond 64 bits (msgpack and SQLite hold no more) and NaN or an infinity (not JSON) become their
    text, which `validate_call` then refuses with a readable line; everything else is unchanged."""
    if isinstance(value, dict):
        return {k: storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63:
        return str(value) if value.bit_length() < 10_000 else f"<a {value.bit_length()}-bit integer>"
    return value


def function_schemas(models: dict[str, type[BaseModel]]) -> list[dict[str, Any]]:
    """OpenAI-style function schemas of argument models (name -> model; the docstring describes it)."""
    out = []
    for name, model in models.items():
        schema = model.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        out.append({
            "type": "function",
            "function": {"name": name, "description": " ".join((model.__doc__ or "").split()), "parameters": schema},
        })
    return out


def tool_json_schemas() -> list[dict[str, Any]]:
    """OpenAI-style function schemas for every tool of the contract (what MCP and clients see)."""
    return function_schemas(TOOL_MODELS)


def client_tool_schemas() -> list[dict[str, Any]]:
    """The contract's function schemas as other chat apps see them (MCP): the same tools, names,
    enums, ranges and required arguments, with the arguments of `CLIENT_OBJECTS` as flat objects
    (`crop`: {left, top, right, bottom}) instead of fixed-length arrays."""
    schemas = tool_json_schemas()
    for spec in schemas:
        properties = spec["function"]["parameters"]["properties"]
        for key, (model, description) in CLIENT_OBJECTS.items():
            if key in properties:
                view = model.model_json_schema()
                view.pop("title", None)
                for prop in view["properties"].values():
                    prop.pop("title", None)
                properties[key] = {**view, "description": description}
    return schemas


def client_arguments(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """A call as a chat app sends it (`client_tool_schemas`) -> the contract's arguments: `crop`
    {left, top, right, bottom} -> [left, top, right, bottom]. The contract's own form (a list)
    passes as it is; everything else is left for `validate_call`. Raises ToolArgumentError with
    one readable line when an object is wrong ("adjust_image: crop.right is required")."""
    if not isinstance(args, dict):
        return args
    out = dict(args)
    for key, (model, _) in CLIENT_OBJECTS.items():
        value = out.get(key)
        if key not in out or value is None or isinstance(value, (list, tuple)):
            continue
        fields = ", ".join(model.model_fields)
        if not isinstance(value, dict):
            raise ToolArgumentError(f"{name}: {key} must be an object {{{fields}}} (got {_shown(value)})")
        try:
            box = model.model_validate(value)
        except ValidationError as err:
            problems: list[str] = []
            for e in err.errors():
                field = str(e["loc"][0]) if e.get("loc") else ""
                if e.get("type") == "extra_forbidden":
                    line = f"{key} takes {fields} (not {field})"
                elif not field:  # the box as a whole
                    line = f"{key}: {str((e.get('ctx') or {}).get('error') or e.get('msg', 'invalid'))}"
                else:
                    line = f"{key}.{_describe_problem(e, model)}"
                if line not in problems:
                    problems.append(line)
            raise ToolArgumentError(f"{name}: {'; '.join(problems)}") from None
        out[key] = [getattr(box, f) for f in model.model_fields]
    return out


def look_arguments(name: str, args: dict[str, Any], *, include_text: bool = False) -> dict[str, Any]:
    """The arguments of a call that describe the look of its result, read from the contract:
    numbers, switches and enum choices (aspect ratio, direction, kelvin...). Free text a person
    wrote (prompt, instruction, description, region) is left out unless `include_text`, and image
    refs always are (they name private images). Unknown tools or arguments are left out."""
    model = TOOL_MODELS.get(name)
    if model is None or not isinstance(args, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in args.items():
        field = model.model_fields.get(key)
        if field is None or value is None:
            continue
        if _names_images(value):
            continue
        if isinstance(value, (bool, int, float)) or (
            isinstance(value, list) and all(isinstance(v, (int, float)) for v in value)
        ):
            out[key] = value
        elif isinstance(value, str) and (_is_choice(field.annotation) or include_text):
            out[key] = value
    return out


def _names_images(value: Any) -> bool:
    if isinstance(value, str):
        return is_ref(value)
    return isinstance(value, list) and any(isinstance(v, str) and is_ref(v) for v in value)


def _is_choice(annotation: Any) -> bool:
    """A Literal (or Optional Literal) type: a choice among the contract's words."""
    if get_origin(annotation) is Literal:
        return True
    return any(_is_choice(a) for a in get_args(annotation) if a is not type(None))


class FaceCheck(BaseModel):
    """Identity measurement of one face between source and result."""

    face: int  # index of the face in the source image (left to right)
    distance: float | None  # embedding distance; None when the face was lost
    same_person: bool
    box: tuple[int, int, int, int] | None = None  # (left, top, right, bottom) in the source


class ToolResult(BaseModel):
    """The short result the planner sees (and surfaces render)."""

    tool: str
    ok: bool = True
    images: list[str] = Field(default_factory=list)  # new refs (or the reverted-to ref)
    current: str | None = None  # the ref that is now current
    size: tuple[int, int] | None = None
    seeds: list[int] = Field(default_factory=list)
    faces: list[FaceCheck] = Field(default_factory=list)
    attempts: int = 1
    drift: dict[str, float] = Field(default_factory=dict)  # e.g. global_shift_px, outside_change
    watermark_ids: list[str] = Field(default_factory=list)
    note: str | None = None  # plain-language warnings ("face 2 still drifts")
    error: str | None = None

    def for_model(self) -> str:
        """Compact text for the tool message the planner reads."""
        if not self.ok:
            return f"ERROR: {self.error}"
        parts = []
        if self.images:
            parts.append("new image(s): " + ", ".join(self.images))
        if self.current:
            parts.append(f"current: {self.current}")
        if self.size:
            parts.append(f"size {self.size[0]}x{self.size[1]}")
        if self.faces:
            ok = sum(f.same_person for f in self.faces)
            parts.append(f"identity: {ok}/{len(self.faces)} faces kept")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts) or "done"


# How a person reads each step (the past tense of what a tool did): answers, notes, version lists.
STEP_WORDS: dict[str, str] = {
    "generate_image": "generated", "edit_image": "edited", "relight_image": "relit", "reframe_image": "reframed",
    "adjust_image": "adjusted", "revert": "reverted", "upload": "uploaded",
}
