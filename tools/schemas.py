"""The tool contract of ../shared/TOOLS.md as pydantic models.

These models are the single source of truth for argument names, enums and ranges: the planner's
tool schemas, MCP tool definitions and validation of every call are derived from them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tools.errors import ToolArgumentError

REF_PATTERN = r"^img_[0-9a-f]{8,64}$"
_REF_RE = re.compile(REF_PATTERN)

AspectRatio = Literal["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"]
ASPECT_RATIOS: tuple[str, ...] = AspectRatio.__args__  # type: ignore[attr-defined]
Direction = Literal["left", "right", "front", "back", "top", "bottom", "top-left", "top-right"]
Softness = Literal["hard", "soft"]
Shot = Literal["close-up", "medium", "wide"]

ImageRef = Annotated[
    str,
    Field(pattern=REF_PATTERN, description="Short id of a stored image version, e.g. img_3f9a2c1b"),
]


def is_ref(value: str) -> bool:
    return bool(_REF_RE.match(value or ""))


class ToolArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerateImage(ToolArgs):
    """Text to image: create new image(s) from a description."""

    prompt: str = Field(min_length=1, max_length=2000, description="What to draw, in detail")
    aspect_ratio: AspectRatio = Field("1:1", description="Shape: 9:16 phone/portrait, 16:9 banner/landscape")
    count: int = Field(1, ge=1, le=4, description="How many variations (1-4)")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Seed for reproducibility")
    negative_prompt: str | None = Field(None, max_length=1000, description="What to avoid")


class EditImage(ToolArgs):
    """Change the content of an image by instruction; faces stay the same person."""

    image: ImageRef
    instruction: str = Field(min_length=1, max_length=2000, description="What to change")
    references: list[ImageRef] = Field(
        default_factory=list, max_length=3,
        description="Other images to bring in (people, objects); group photos",
    )
    preserve_identity: bool = Field(True, description="Keep every face the same person")
    region: str | None = Field(None, max_length=200, description='What to change, e.g. "background"')


class RelightImage(ToolArgs):
    """Change the light (sources, colour, mood); keep content, faces and geometry."""

    image: ImageRef
    direction: Direction | None = None
    color_temperature: int | None = Field(
        None, ge=1500, le=10000, description="Kelvin: warm < 4000 < neutral < 6500 < cool"
    )
    intensity: float | None = Field(None, ge=0.2, le=2.0, description="1 = unchanged")
    softness: Softness | None = None
    description: str | None = Field(None, max_length=300, description='e.g. "golden hour sun", "candlelight"')


class ReframeImage(ToolArgs):
    """Change framing or viewpoint: aspect ratio, zoom (outpaint / crop in), camera angle, shot."""

    image: ImageRef
    aspect_ratio: AspectRatio | None = None
    zoom: float | None = Field(None, ge=0.5, le=3.0, description="< 1 zooms out and outpaints, > 1 zooms in")
    camera_azimuth: float | None = Field(
        None, ge=-180, le=180, description="Degrees; positive turns the camera to the subject's left"
    )
    camera_elevation: float | None = Field(
        None, ge=-60, le=60, description="Degrees; positive looks down from above"
    )
    shot: Shot | None = None


class AdjustImage(ToolArgs):
    """Exact, deterministic photo adjustments with no generative model."""

    image: ImageRef
    exposure_ev: float | None = Field(None, ge=-3, le=3, description="Exposure change in stops")
    white_balance_k: int | None = Field(
        None, ge=1500, le=15000, description="Target white balance in kelvin (6500 = neutral; lower = warmer)"
    )
    contrast: float | None = Field(None, ge=0.0, le=3.0, description="1 = unchanged")
    saturation: float | None = Field(None, ge=0.0, le=3.0, description="1 = unchanged, 0 = greyscale")
    rotate_deg: float | None = Field(None, ge=-360, le=360, description="Counter-clockwise degrees")
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


class Revert(ToolArgs):
    """Make an earlier version the current one (undo, go back, branch from there)."""

    image: ImageRef


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
        problems = []
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "arguments"
            problems.append(f"{where}: {e['msg']}")
        raise ToolArgumentError(f"{name}: " + "; ".join(problems)) from None


def tool_json_schemas() -> list[dict[str, Any]]:
    """OpenAI-style function schemas for every tool (what the planner and MCP see)."""
    out = []
    for name, model in TOOL_MODELS.items():
        schema = model.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        out.append({
            "type": "function",
            "function": {"name": name, "description": (model.__doc__ or "").strip(), "parameters": schema},
        })
    return out


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
    safety: dict[str, str] = Field(default_factory=dict)
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
