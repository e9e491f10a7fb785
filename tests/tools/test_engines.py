"""Tiny random-weight engines of both Qwen-Image families: sizes, edits, progress, caching, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tools.engines import get_engine, native_sizes, snap_dimensions
from tools.engines.base import QWEN_IMAGE_SIZES, ratio_of
from tools.errors import CancelledError, ModelUnavailableError
from tools.settings import EngineSettings

FAMILIES = ["qwen-image", "qwen-image-2.1"]


def tiny(family: str, **kw) -> EngineSettings:
    settings = dict(family=family, source="random", steps=2, edit_condition_area=1024, edit_vae_area=4096)
    return EngineSettings(**{**settings, **kw})


def noise(width: int, height: int, seed: int) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(arr)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("aspect", ["1:1", "16:9", "3:4"])
def test_generate_draws_the_native_size_of_each_aspect_ratio(family, aspect):
    engine = get_engine(tiny(family))
    width, height = engine.native_size(aspect)
    assert width % engine.multiple == 0 and height % engine.multiple == 0
    if aspect != "1:1":
        assert (width > height) == (ratio_of(aspect) > 1)
    images = engine.generate("a lighthouse at dusk", width=width, height=height, seed=7)
    assert [im.size for im in images] == [(width, height)]
    assert images[0].mode == "RGB"


def test_full_size_defaults_are_the_model_card_sizes():
    assert native_sizes(EngineSettings(family="qwen-image", source="hub"))["16:9"] == (1664, 928)
    assert native_sizes(EngineSettings(family="qwen-image", source="hub")) == QWEN_IMAGE_SIZES
    sizes_21 = native_sizes(EngineSettings(family="qwen-image-2.1", source="hub"))
    assert sizes_21["1:1"] == (1024, 1024)
    assert all(w % 32 == 0 and h % 32 == 0 for w, h in sizes_21.values())
    custom = native_sizes(EngineSettings(sizes={"1:1": (70, 70)}))  # snapped to what the model keeps
    assert custom == {"1:1": (64, 64)}


def test_seeds_make_generation_reproducible_and_count_gives_distinct_images():
    engine = get_engine(tiny("qwen-image"))
    a = engine.generate("a red cube", width=64, height=64, seed=11, count=2)
    b = engine.generate("a red cube", width=64, height=64, seed=11, count=1)
    assert len(a) == 2
    np.testing.assert_allclose(np.asarray(a[0], float), np.asarray(b[0], float), atol=2)
    assert np.abs(np.asarray(a[0], float) - np.asarray(a[1], float)).mean() > 1


@pytest.mark.parametrize("family", FAMILIES)
def test_edit_with_two_reference_images(family):
    engine = get_engine(tiny(family))
    source, ref1, ref2 = noise(96, 64, 1), noise(48, 48, 2), noise(64, 32, 3)
    out = engine.edit("put the two of them on a beach", [source, ref1, ref2], seed=3)
    assert out.size == engine.edit_size(96, 64)
    out2 = engine.edit("a sunset", [source], seed=3, width=64, height=32)
    assert out2.size == (64, 32)


def test_edit_resize_targets_follow_the_profile():
    settings = tiny("qwen-image")
    engine = get_engine(settings)
    pipe = engine.edit_pipeline()
    assert (pipe.condition_image_area, pipe.vae_image_area) == (1024, 4096)
    seen = []
    original_resize, original_pre = pipe.image_processor.resize, pipe.image_processor.preprocess

    def resize(img, height, width, *a, **k):
        seen.append(("vl", width, height))
        return original_resize(img, height, width, *a, **k)

    def preprocess(img, height=None, width=None, *a, **k):
        seen.append(("vae", width, height))
        return original_pre(img, height, width, *a, **k)

    pipe.image_processor.resize, pipe.image_processor.preprocess = resize, preprocess
    try:
        engine.edit("make it blue", [noise(64, 64, 4)], seed=0)
    finally:
        pipe.image_processor.resize, pipe.image_processor.preprocess = original_resize, original_pre
    assert ("vl", 32, 32) in seen  # 1024 px area, not diffusers' 384x384
    assert ("vae", 64, 64) in seen  # 4096 px area, not 1024x1024
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as module

    assert module.VAE_IMAGE_SIZE == 1024 * 1024  # the library's own module is untouched


def test_progress_reports_every_step_and_cancel_stops_the_run():
    engine = get_engine(tiny("qwen-image"))
    steps = []
    engine.generate("a boat", width=64, height=64, seed=0, steps=3, progress=lambda i, n: steps.append((i, n)))
    assert steps == [(1, 3), (2, 3), (3, 3)]

    calls = []

    def cancel(i, n):
        calls.append(i)
        raise CancelledError("stopped by the user")

    with pytest.raises(CancelledError):
        engine.generate("a boat", width=64, height=64, seed=0, steps=3, progress=cancel)
    assert calls == [1]


def test_engines_are_cached_per_settings():
    a = get_engine(tiny("qwen-image"))
    assert get_engine(tiny("qwen-image")) is a
    assert get_engine(tiny("qwen-image", seed_base=1)) is not a


def test_missing_checkpoint_is_a_clear_model_unavailable_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = EngineSettings(family="qwen-image-2.1", source="hub", generate_model=str(tmp_path / "no-such-model"))
    engine = get_engine(settings, profile="qwen-image-2.1")
    with pytest.raises(ModelUnavailableError) as err:
        engine.generate("x", width=64, height=64, seed=0)
    message = str(err.value)
    assert "qwen-image-2.1" in message and "no-such-model" in message and "\n" not in message


def test_snap_dimensions_keeps_area_ratio_and_multiple():
    w, h = snap_dimensions(1024 * 1024, 16 / 9, 32)
    assert (w % 32, h % 32) == (0, 0)
    assert abs(w * h - 1024 * 1024) / (1024 * 1024) < 0.05
    assert abs(w / h - 16 / 9) < 0.05


def _diffusers_calculate_dimensions():
    """Every `calculate_dimensions` the installed Qwen-Image edit pipelines (and 2.1) resize with."""
    import importlib

    found = {}
    for name in ("qwenimage.pipeline_qwenimage_edit", "qwenimage.pipeline_qwenimage_edit_plus",
                 "qwenimage.pipeline_qwenimage_edit_inpaint", "qwenimage21.pipeline_qwenimage21"):
        try:
            module = importlib.import_module(f"diffusers.pipelines.{name}")
        except ImportError:
            continue
        found[name] = module.calculate_dimensions
    assert "qwenimage.pipeline_qwenimage_edit_plus" in found
    return found


@pytest.mark.parametrize("aspect", ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"])
def test_edit_sizes_are_diffusers_calculate_dimensions(aspect):
    """The sizes edits are drawn at are the sizes the pipelines resize their VAE input to, taken from
    diffusers itself (not from `edit_size`): 16:9 at 1024^2 is 1376x768, not 1360x768."""
    from tools.schemas import ASPECT_RATIOS

    assert aspect in ASPECT_RATIOS
    engines = [get_engine(EngineSettings(family=f, source="hub", generate_model="unused")) for f in FAMILIES]
    engines += [get_engine(tiny(f, edit_vae_area=a)) for f in FAMILIES for a in (160 * 160, 4096, 384 * 384)]
    for w, h in [QWEN_IMAGE_SIZES[aspect], (int(ratio_of(aspect) * 1000), 1000), (997, int(997 / ratio_of(aspect)))]:
        for name, calculate in _diffusers_calculate_dimensions().items():
            for engine in engines:
                expected = tuple(calculate(engine.edit_vae_area(), w / h)[:2])
                assert engine.edit_size(w, h) == expected, (name, engine.family, engine.edit_vae_area(), w, h)
            for area in (1024 * 1024, 384 * 384, 1328 * 1328):
                assert snap_dimensions(area, w / h) == tuple(calculate(area, w / h)[:2]), (name, area)


def test_edit_size_16_9_and_4_3_at_a_megapixel():
    engine = get_engine(EngineSettings(family="qwen-image", source="hub", generate_model="unused"))
    assert engine.edit_size(1664, 928) == (1376, 768)
    assert engine.edit_size(1472, 1104) == (1184, 896)


def test_out_of_memory_becomes_an_engine_error(monkeypatch):
    import torch

    from tools.errors import EngineError

    engine = get_engine(tiny("qwen-image"))

    def exhausted(**kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")

    monkeypatch.setattr(engine, "generate_pipeline", lambda: exhausted)
    with pytest.raises(EngineError, match="out of memory for a 4096x4096 image"):
        engine.generate("x", width=4096, height=4096, seed=0)


def test_loras_belong_to_their_pipeline_and_lightning_sets_few_steps(tmp_path):
    from tools.settings import LoraSpec

    loras = [
        LoraSpec(name="fast-t2i", repo=str(tmp_path / "t2i"), role="lightning", steps=8, pipeline="generate"),
        LoraSpec(name="fast-edit", repo=str(tmp_path / "edit"), role="lightning", steps=4, pipeline="edit"),
        LoraSpec(name="relight", repo=str(tmp_path / "relight"), role="relight"),
        LoraSpec(name="angles", repo=str(tmp_path / "angles"), role="angles"),
    ]
    engine = get_engine(tiny("qwen-image", loras=loras, steps=40))
    assert [s.name for s in engine.loras_for("generate")] == ["fast-t2i"]
    assert [s.name for s in engine.loras_for("edit")] == ["fast-edit", "relight", "angles"]
    assert engine.adapter_names("angles") == ["angles"]
    assert engine._steps(None, True, "edit") == (4, ["fast-edit"])
    assert engine._steps(None, True, "generate") == (8, ["fast-t2i"])
    assert engine._steps(None, False, "edit") == (40, [])  # the identity gate's last retry: full steps
    # 2.1 is one model: every LoRA applies to it
    engine_21 = get_engine(tiny("qwen-image-2.1", loras=loras))
    assert len(engine_21.loras_for("generate")) == 4
    # LoRAs that cannot be loaded (no peft, or no files) are a clear error, not a crash
    with pytest.raises(ModelUnavailableError, match="LoRA|peft"):
        engine.generate_pipeline()


def test_bench_prints_step_tool_and_memory_figures():
    import io

    from agent.config import load_profile
    from tools.engine_bench import run

    buf = io.StringIO()
    figures = run(load_profile("tiny"), repeats=1, tools=("adjust_image", "revert"), out=buf)
    text = buf.getvalue()
    from tools.engines import native_sizes

    width, height = native_sizes(load_profile("tiny").engine)["1:1"]
    assert f"denoising step ({width}x{height}): median" in text
    assert "adjust_image    end to end" in text and "revert" in text
    assert "peak RSS" in text
    assert figures["step_s"] > 0 and set(figures["tools"]) == {"adjust_image", "revert"}


@pytest.mark.parametrize("family", FAMILIES)
def test_hub_pipelines_load_with_the_registered_text_encoder_and_register_their_own(family, monkeypatch):
    """Hub checkpoints: a text encoder registered first (a planner's) is passed to `from_pretrained`
    instead of loading a second copy; loaded first, the pipeline's own is registered."""
    from types import SimpleNamespace

    from tools import shared_models

    class FakePipe(SimpleNamespace):
        def set_progress_bar_config(self, **kw):
            pass

        def to(self, device):
            return self

    planner_copy = {"model": object(), "processor": SimpleNamespace(tokenizer=object())}
    calls = []

    def from_pretrained(self, cls, repo, **shared):
        calls.append(shared)
        return FakePipe(text_encoder=shared.get("text_encoder", "own-encoder"), vae="vae",
                        processor=shared.get("processor", SimpleNamespace(tokenizer=None)))

    from tools.engines.qwen import DiffusersQwenEngine

    monkeypatch.setattr(DiffusersQwenEngine, "_from_pretrained", from_pretrained)
    settings = EngineSettings(family=family, source="hub", generate_model=f"hub-test-{family}", edit_model="e")
    key = shared_models.text_encoder_key(settings)
    shared_models.register(key, planner_copy)
    try:
        engine = DiffusersQwenEngine(settings)
        assert engine.generate_pipeline().text_encoder is planner_copy["model"]
        assert engine.edit_pipeline().processor is planner_copy["processor"]
        assert all(c["text_encoder"] is planner_copy["model"] for c in calls)
        if family == "qwen-image":
            assert calls[0]["tokenizer"] is planner_copy["processor"].tokenizer
    finally:
        shared_models.forget(key)
    # the other order: the engine loads first and registers the pipeline's encoder + processor
    engine = DiffusersQwenEngine(settings.model_copy(update={"edit_model": None}))
    try:
        pipe = engine.edit_pipeline()
        assert shared_models.lookup(key) == {"model": "own-encoder", "processor": pipe.processor}
    finally:
        shared_models.forget(key)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("aspect", ["16:9", "9:16", "4:3"])
def test_edit_of_every_aspect_draws_at_the_vae_condition_size(family, aspect):
    """Areas that round above the VAE area (16:9 at 64^2 is 96x64): the VL processor must not shrink
    the condition image again (2.1 then had fewer image tokens than latents and failed)."""
    engine = get_engine(tiny(family))
    w, h = engine.native_size(aspect)
    out = engine.edit("make it blue", [noise(w, h, 5)], seed=1)
    assert out.size == engine.edit_size(w, h)
