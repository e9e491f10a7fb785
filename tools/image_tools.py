"""The six image tools of TOOLS.md, callable without the agent.

`run_tool(ctx, name, args)` validates the call, loads the images it names from the store, runs the
engine, checks identity (edit, relight, reframe) and *stages* the results (`store.stage`): they are
not screened or sealed yet, so they get no ref here. The agent screens, seals and `store.put`s each
`StagedImage` with its `parent`, `origin` and `tool_call`. `revert` stages nothing and sets
`result.current`.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Callable, Literal

import numpy as np
import yaml
from PIL import Image
from pydantic import BaseModel, Field

from tools import adjust as adjust_ops
from tools import drift
from tools.engines import ImageEngine, get_engine, snap_dimensions
from tools.errors import ToolArgumentError
from tools.identity import FaceAnalyzer, describe_checks
from tools.schemas import (
    AdjustImage,
    EditImage,
    FaceCheck,
    GenerateImage,
    ReframeImage,
    RelightImage,
    Revert,
    ToolArgs,
    ToolResult,
    TOOL_MODELS,
    validate_call,
)
from tools.settings import EngineSettings, IdentitySettings
from tools.store import ImageStore


class StagedImage(BaseModel):
    """A tool result waiting to be screened, sealed and stored."""

    staging_id: str
    parent: str | None = None
    origin: Literal["generated", "edited"] = "generated"
    tool_call: dict[str, Any]  # {"name": ..., "args": {...}}
    metadata: dict[str, Any] = Field(default_factory=dict)  # seed, steps, identity, drift...
    source_refs: list[str] = Field(default_factory=list)  # every stored image the result came from


@dataclass
class ToolOutcome:
    result: ToolResult
    staged: list[StagedImage] = field(default_factory=list)


@dataclass
class ToolContext:
    store: ImageStore
    engine: EngineSettings
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    session: str | None = None
    progress: Callable[[int, int], None] | None = None
    analyzer: FaceAnalyzer | None = None
    profile: str | None = None  # named in errors (e.g. missing weights)

    def get_engine(self) -> ImageEngine:
        return get_engine(self.engine, profile=self.profile)

    def get_analyzer(self) -> FaceAnalyzer:
        if self.analyzer is None:
            self.analyzer = _analyzer_for(self.identity.model_dump_json())
        return self.analyzer


# Identity checks run on images at most this large (longest side, pixels).
IDENTITY_MAX_SIDE = 1024

_ANALYZERS: dict[str, FaceAnalyzer] = {}
_ANALYZERS_LOCK = threading.Lock()


def _analyzer_for(settings_json: str) -> FaceAnalyzer:
    """One analyser per identity settings per process (loading the models takes a second)."""
    with _ANALYZERS_LOCK:
        if settings_json not in _ANALYZERS:
            _ANALYZERS[settings_json] = FaceAnalyzer(IdentitySettings.model_validate_json(settings_json))
        return _ANALYZERS[settings_json]


@lru_cache(maxsize=None)
def load_prompts(name: str) -> dict[str, Any]:
    """A prompt template file from `prompts/tools/` (data, not code)."""
    return yaml.safe_load(resources.files("prompts.tools").joinpath(f"{name}.yaml").read_text(encoding="utf-8"))


# -- entry point ------------------------------------------------------------------------------

def run_tool(ctx: ToolContext, name: str, args: dict | ToolArgs | None) -> ToolOutcome:
    """Validate and run one tool call; raise `tools.errors` types for anything a caller caused."""
    if isinstance(args, ToolArgs):
        model = TOOL_MODELS.get(name)
        if model is None or not isinstance(args, model):
            args = validate_call(name, args.model_dump(mode="json", exclude_none=True))
    else:
        args = validate_call(name, args)
    return TOOLS[name](ctx, args)


def _call(name: str, args: ToolArgs, **filled: Any) -> dict[str, Any]:
    payload = args.model_dump(mode="json", exclude_none=True)
    payload.update(filled)
    return {"name": name, "args": payload}


def _new_seed(ctx: ToolContext) -> int:
    """The profile's fixed seed (`engine.seed`: a chat's Seed setting), else a new random one."""
    return ctx.engine.seed if ctx.engine.seed is not None else secrets.randbelow(2**31)


def _engine_meta(ctx: ToolContext, steps: int, seed: int, size: tuple[int, int]) -> dict[str, Any]:
    return {"seed": seed, "steps": steps, "width": size[0], "height": size[1], "family": ctx.engine.family,
            "source": ctx.engine.source}


# -- generate ---------------------------------------------------------------------------------

def generate_image(ctx: ToolContext, args: GenerateImage) -> ToolOutcome:
    engine = ctx.get_engine()
    width, height = engine.native_size(args.aspect_ratio)
    seed = args.seed if args.seed is not None else _new_seed(ctx)
    images = engine.generate(args.prompt, width=width, height=height, seed=seed, negative_prompt=args.negative_prompt,
                             count=args.count, progress=ctx.progress)
    seeds = [seed + i for i in range(len(images))]
    call = _call("generate_image", args, seed=seed)
    staged = []
    for image, s in zip(images, seeds):
        meta = _engine_meta(ctx, ctx.engine.steps, s, image.size) | {"aspect_ratio": args.aspect_ratio}
        sid = ctx.store.stage(image, meta)
        staged.append(StagedImage(staging_id=sid, parent=None, origin="generated", tool_call=call, metadata=meta))
    result = ToolResult(tool="generate_image", size=(width, height), seeds=seeds)
    return ToolOutcome(result=result, staged=staged)


# -- identity-gated editing (edit, relight, reframe share this) ------------------------------------

@dataclass
class Attempt:
    image: Image.Image
    seed: int
    few_step: bool
    faces: list[FaceCheck]
    backend_note: str | None = None  # e.g. "faces checked with dlib, not insightface: ..."

    @property
    def kept(self) -> int:
        return sum(f.same_person for f in self.faces)

    @property
    def worst(self) -> float:
        return max((f.distance if f.distance is not None else 9.0) for f in self.faces) if self.faces else 0.0


def _gated(
    ctx: ToolContext,
    render: Callable[[int, bool], Image.Image],
    source: Image.Image,
    align: Callable[[Image.Image], Image.Image],
    *,
    seed: int,
    check_identity: bool,
    gate: bool = True,
) -> tuple[Attempt, int]:
    """Render, check every face of `source` in the (aligned) result, retry while a face drifts.

    Attempt k uses seed `seed + k - 1`; the last allowed attempt also drops the few-step LoRA and
    runs the profile's full steps. Returns the best attempt and how many were made.
    """
    analyzer = ctx.get_analyzer() if check_identity else None
    factor = 1.0
    if analyzer is not None and max(source.size) > IDENTITY_MAX_SIDE:
        # Faces are compared at a bounded size: a 12 MP upload would make every check take seconds.
        factor = IDENTITY_MAX_SIDE / max(source.size)
        size = (max(1, round(source.width * factor)), max(1, round(source.height * factor)))
        source = source.resize(size, Image.LANCZOS)
        full_align = align
        align = lambda image: full_align(image).resize(size, Image.LANCZOS)  # noqa: E731
    source_faces = analyzer.faces(source) if analyzer is not None and analyzer.enabled else []
    # measured whenever the source has faces; retried only when the faces must stay (`gate`)
    max_attempts = max(1, ctx.identity.max_attempts) if source_faces and gate else 1
    best: Attempt | None = None
    for k in range(1, max_attempts + 1):
        few_step = not (k == max_attempts and k > 1)
        image = render(seed + k - 1, few_step)
        checks = analyzer.compare(source, align(image), source_faces=source_faces) if source_faces else []
        if factor != 1.0:  # report face boxes in the source image's own pixels
            for check in checks:
                check.box = tuple(round(v / factor) for v in check.box) if check.box else None
        attempt = Attempt(image=image, seed=seed + k - 1, few_step=few_step, faces=checks,
                          backend_note=getattr(analyzer, "fallback_note", None))
        if best is None or (attempt.kept, -attempt.worst) > (best.kept, -best.worst):
            best = attempt
        if attempt.kept == len(checks):
            return attempt, k
    return best, max_attempts


def _stage_edit(
    ctx: ToolContext, name: str, args: ToolArgs, attempt: Attempt, attempts: int, parent: str,
    source_refs: list[str], drift_figures: dict[str, float], extra_meta: dict[str, Any] | None = None,
    drift_note: str | None = None,
) -> ToolOutcome:
    image = attempt.image
    steps = ctx.engine.steps
    meta = _engine_meta(ctx, steps, attempt.seed, image.size) | {
        "identity": [f.model_dump(mode="json") for f in attempt.faces],
        "attempts": attempts, "few_step": attempt.few_step, "drift": drift_figures, **(extra_meta or {}),
    }
    sid = ctx.store.stage(image, meta)
    staged = StagedImage(staging_id=sid, parent=parent, origin="edited", tool_call=_call(name, args),
                         metadata=meta, source_refs=source_refs)
    note = describe_checks(attempt.faces)
    if note and attempts > 1:
        note += f" after {attempts} attempts"
    if attempt.backend_note:
        note = f"{note}; {attempt.backend_note}" if note else attempt.backend_note
    if drift_note:
        note = f"{note}; {drift_note}" if note else drift_note
    result = ToolResult(tool=name, size=image.size, seeds=[attempt.seed], faces=attempt.faces, attempts=attempts,
                        drift=drift_figures, note=note)
    return ToolOutcome(result=result, staged=[staged])


def _load(ctx: ToolContext, ref: str) -> Image.Image:
    return ctx.store.open(ref)  # UnknownRefError for a malformed or missing ref


def _resize_to(size: tuple[int, int]) -> Callable[[Image.Image], Image.Image]:
    return lambda image: image if image.size == size else image.resize(size, Image.LANCZOS)


def _drift_control(source: Image.Image, attempt: Attempt, *, paste_back: bool) -> tuple[dict[str, float], str | None]:
    """Re-align the chosen attempt onto the source when the model moved it and (for edits) paste
    back what the edit did not touch; `attempt.image` is replaced, at the engine's own size.

    The work is done on the result's grid (the source resized to it), so the staged image keeps the
    size the engine drew; shifts are reported in source pixels. Faces the edit touched are edited
    whole (their boxes, from the identity check, join the change mask)."""
    grid = attempt.image.size
    base = source if source.size == grid else source.resize(grid, Image.LANCZOS)
    fx, fy = grid[0] / source.width, grid[1] / source.height
    faces = [(b[0] * fx, b[1] * fy, b[2] * fx, b[3] * fy) for b in (f.box for f in attempt.faces) if b]
    image, report = drift.correct(base, attempt.image, paste_back=paste_back, faces=faces)
    if report.realigned or report.pasted_back:
        attempt.image = image
    report = report.rescaled(source.width / grid[0])
    return report.figures(), report.note()


def edit_image(ctx: ToolContext, args: EditImage) -> ToolOutcome:
    source = _load(ctx, args.image)
    references = [_load(ctx, ref) for ref in args.references]
    clauses = load_prompts("edit")
    instruction = args.instruction.strip()
    for index in range(2, len(references) + 2):  # the pipelines label inputs "Picture 1", "Picture 2"...
        instruction += " " + clauses["references"].format(index=index)
    if args.region:
        instruction += " " + clauses["region"].format(region=args.region)
    if args.preserve_identity:
        instruction += " " + clauses["preserve_identity"]
    engine = ctx.get_engine()
    width, height = engine.edit_size(*source.size)

    def render(seed: int, few_step: bool) -> Image.Image:
        return engine.edit(instruction, [source, *references], seed=seed, width=width, height=height,
                           progress=ctx.progress, negative_prompt=clauses["negative"], few_step=few_step)

    align = _resize_to(source.size)
    attempt, attempts = _gated(ctx, render, source, align, seed=_new_seed(ctx), check_identity=True,
                                gate=args.preserve_identity)
    figures, drift_note = _drift_control(source, attempt, paste_back=True)
    return _stage_edit(ctx, "edit_image", args, attempt, attempts, args.image, [args.image, *args.references],
                       figures, {"instruction": instruction}, drift_note=drift_note)


# -- relight ----------------------------------------------------------------------------------

def _band(bands: list[list[Any]], value: float) -> str:
    for bound, words in bands:
        if value < bound:
            return words
    return bands[-1][1]


def relight_prompt(args: RelightImage) -> str:
    """The instruction for a typed light spec, from `prompts/tools/relight.yaml`."""
    t = load_prompts("relight")
    parts = []
    if args.description:
        parts.append(t["parts"]["description"].format(description=args.description.strip()))
    if args.direction:
        parts.append(t["parts"]["direction"].format(direction=t["directions"][args.direction]))
    if args.color_temperature is not None:
        parts.append(t["parts"]["temperature"].format(
            temperature_words=_band(t["temperatures"], args.color_temperature), kelvin=args.color_temperature))
    if args.intensity is not None:
        parts.append(t["parts"]["intensity"].format(intensity_words=_band(t["intensities"], args.intensity)))
    if args.softness:
        parts.append(t["parts"]["softness"].format(softness_words=t["softness"][args.softness]))
    return t["template"].format(light=", ".join(parts) or t["default_light"])


def relight_image(ctx: ToolContext, args: RelightImage) -> ToolOutcome:
    source = _load(ctx, args.image)
    prompt = relight_prompt(args)
    engine = ctx.get_engine()
    width, height = engine.edit_size(*source.size)
    adapters = engine.adapter_names("relight")

    def render(seed: int, few_step: bool) -> Image.Image:
        return engine.edit(prompt, [source], seed=seed, width=width, height=height, progress=ctx.progress,
                           negative_prompt=load_prompts("relight")["negative"], adapters=adapters, few_step=few_step)

    align = _resize_to(source.size)
    attempt, attempts = _gated(ctx, render, source, align, seed=_new_seed(ctx), check_identity=True)
    # Light changes everywhere: only the geometry is corrected (no paste-back); outside_change is
    # the residual geometric change once a smooth change of light is taken out.
    figures, drift_note = _drift_control(source, attempt, paste_back=False)
    return _stage_edit(ctx, "relight_image", args, attempt, attempts, args.image, [args.image], figures,
                       {"instruction": prompt}, drift_note=drift_note)


# -- reframe ----------------------------------------------------------------------------------

def viewpoint_prompt(args: ReframeImage) -> str | None:
    """The 2511 viewpoint instruction for a camera move, or None when the camera does not move."""
    t = load_prompts("reframe")
    words = t[t.get("language", "en")]
    parts = []
    if args.camera_azimuth:
        key = "rotate_left" if args.camera_azimuth > 0 else "rotate_right"
        parts.append(words[key].format(degrees=int(round(abs(args.camera_azimuth)))))
    if args.camera_elevation:
        if args.camera_elevation >= t["top_down_from"]:
            parts.append(words["top_down"])
        else:
            key = "look_down" if args.camera_elevation > 0 else "look_up"
            parts.append(words[key].format(degrees=int(round(abs(args.camera_elevation)))))
    if args.shot:
        parts.append(words["shots"][args.shot])
    if not parts:
        return None
    return " ".join(parts) + " " + t["keep"]


def outpaint_canvas(
    source: Image.Image, canvas: tuple[int, int], zoom: float, fill: tuple[int, int, int]
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Pad: the source scaled to fit `zoom` of the canvas, centred on a flat fill. Returns the
    padded image and the content box (the mask of what must not change)."""
    cw, ch = canvas
    fit = min(cw / source.width, ch / source.height) * zoom
    w, h = max(1, round(source.width * fit)), max(1, round(source.height * fit))
    left, top = (cw - w) // 2, (ch - h) // 2
    padded = Image.new("RGB", canvas, tuple(fill))
    padded.paste(source.resize((w, h), Image.LANCZOS), (left, top))
    return padded, (left, top, left + w, top + h)


def reframe_image(ctx: ToolContext, args: ReframeImage) -> ToolOutcome:
    if args.aspect_ratio is None and args.zoom in (None, 1.0) and viewpoint_prompt(args) is None:
        raise ToolArgumentError("reframe_image: give at least one of aspect_ratio, zoom, camera_azimuth, "
                                "camera_elevation or shot")
    source = _load(ctx, args.image)
    engine = ctx.get_engine()
    t = load_prompts("reframe")
    zoom = args.zoom or 1.0
    camera = viewpoint_prompt(args)
    adapters = engine.adapter_names("angles") if camera else []
    extra: dict[str, Any] = {}

    if zoom > 1.0:  # zoom in: crop the centre, then let the model re-render it at full size
        cw, ch = source.width / zoom, source.height / zoom
        box = (round((source.width - cw) / 2), round((source.height - ch) / 2),
               round((source.width + cw) / 2), round((source.height + ch) / 2))
        base = source.crop(box)
        reference = base
        instruction = t["zoom_in"] if camera is None else camera
        extra["crop_box"] = list(box)
    else:
        base, reference = source, source
        instruction = camera

    if args.aspect_ratio or zoom < 1.0:
        # Outpaint: pad to the new canvas (same aspect unless one is given) and fill the border.
        # The canvas is the size the edit pipeline encodes its input at (VAE area, snapped), so the
        # output grid lines up with the input latents (no Qwen-Image-Edit zoom/shift).
        if args.aspect_ratio:
            native_w, native_h = engine.native_size(args.aspect_ratio)
            ratio = native_w / native_h
        else:
            ratio = base.width / base.height
        canvas = snap_dimensions(engine.edit_vae_area(), ratio, engine.edit_multiple)
        padded, content = outpaint_canvas(base, canvas, min(zoom, 1.0), t["outpaint_fill"])
        keep = np.zeros((canvas[1], canvas[0]), dtype=bool)
        keep[content[1]:content[3], content[0]:content[2]] = True
        prompt = t["outpaint"] if instruction is None else instruction + " " + t["outpaint"]
        extra["content_box"] = list(content)

        raws: dict[int, Image.Image] = {}  # seed -> the model's own output, before compositing

        def render(seed: int, few_step: bool) -> Image.Image:
            out = engine.edit(prompt, [padded], seed=seed, width=canvas[0], height=canvas[1], progress=ctx.progress,
                              adapters=adapters, few_step=few_step)
            raw = raws[seed] = out if out.size == canvas else out.resize(canvas, Image.LANCZOS)
            if camera is not None:
                return raw  # the viewpoint moved: the old pixels are not the new ones
            # The mask: only the padded border is new; the original content is pasted back exactly.
            return Image.composite(padded, raw, Image.fromarray(keep.astype(np.uint8) * 255))

        def align(image: Image.Image) -> Image.Image:
            return image.crop(content).resize(reference.size, Image.LANCZOS)

        attempt, attempts = _gated(ctx, render, reference, align, seed=_new_seed(ctx), check_identity=True)
        raw = raws[attempt.seed]
        # Drift: how much the model moved or changed inside the area it was asked to keep.
        figures = drift.measure(padded, raw, keep).figures()
    else:
        width, height = engine.edit_size(*base.size)

        def render(seed: int, few_step: bool) -> Image.Image:
            return engine.edit(instruction, [base], seed=seed, width=width, height=height, progress=ctx.progress,
                               adapters=adapters, few_step=few_step)

        align = _resize_to(reference.size)
        attempt, attempts = _gated(ctx, render, reference, align, seed=_new_seed(ctx), check_identity=True)
        figures = drift.measure(reference, align(attempt.image), outside=False).figures()  # framing moved on purpose
    extra["instruction"] = instruction or t["outpaint"]
    return _stage_edit(ctx, "reframe_image", args, attempt, attempts, args.image, [args.image], figures, extra)


# -- adjust and revert ------------------------------------------------------------------------

def adjust_image(ctx: ToolContext, args: AdjustImage) -> ToolOutcome:
    source = _load(ctx, args.image)
    if all(getattr(args, k) is None for k in ("exposure_ev", "white_balance_k", "contrast", "saturation",
                                              "rotate_deg", "crop")):
        raise ToolArgumentError("adjust_image: give at least one adjustment (exposure_ev, white_balance_k, "
                                "contrast, saturation, rotate_deg, crop)")
    if adjust_ops.changes_nothing(**args.model_dump()):  # no new version that is the same picture
        raise ToolArgumentError(f"adjust_image: {adjust_ops.NO_CHANGE}")
    image = adjust_ops.adjust(source, exposure_ev=args.exposure_ev, white_balance_k=args.white_balance_k,
                              contrast=args.contrast, saturation=args.saturation, rotate_deg=args.rotate_deg,
                              crop=args.crop)
    meta = {"width": image.width, "height": image.height, "generative": False}
    sid = ctx.store.stage(image, meta)
    staged = StagedImage(staging_id=sid, parent=args.image, origin="edited", tool_call=_call("adjust_image", args),
                         metadata=meta, source_refs=[args.image])
    return ToolOutcome(result=ToolResult(tool="adjust_image", size=image.size), staged=[staged])


def revert(ctx: ToolContext, args: Revert) -> ToolOutcome:
    version = ctx.store.get(args.image)  # UnknownRefError when it does not exist
    result = ToolResult(tool="revert", images=[version.ref], current=version.ref, size=(version.width, version.height))
    return ToolOutcome(result=result, staged=[])


TOOLS: dict[str, Callable[[ToolContext, Any], ToolOutcome]] = {
    "generate_image": generate_image,
    "edit_image": edit_image,
    "relight_image": relight_image,
    "reframe_image": reframe_image,
    "adjust_image": adjust_image,
    "revert": revert,
}
