"""The transformers Qwen-VL planner's code path on the CPU: a tiny random-weight Qwen2.5-VL (the
architecture of Qwen-Image's text encoder) with a locally built tokenizer; the output is random
text, so the tests check the plumbing: images reach the model, decoding is bounded, the loaded
text encoder is shared with the engine through the registry."""

from __future__ import annotations

import pytest
from PIL import Image

from agent.config import PlannerSettings, load_profile
from agent.planners import build_planner
from agent.planners.base import PlannerReply
from agent.planners.transformers_vl import VISION_TOKENS, TransformersVLPlanner, _render
from agent.intents import plan_json_schemas
from tools import shared_models


@pytest.fixture(scope="module")
def tiny_vl():
    from tools.engines.tiny import qwen_image_components

    parts = qwen_image_components(seed=0)
    return {"model": parts["text_encoder"], "processor": parts["processor"]}


def _settings(**extra) -> PlannerSettings:
    return PlannerSettings(kind="transformers", model="tiny-random-qwen2.5-vl", dtype="float32", max_tokens=6, **extra)


def _messages(image_path=None):
    user = {"role": "user", "content": "make it warmer"}
    if image_path:
        user["image_paths"] = [image_path]
    return [{"role": "system", "content": "You edit images."}, user]


def test_render_puts_vision_tokens_where_images_are(tmp_path):
    text, paths = _render(_messages("/x.png"), plan_json_schemas()[:1], see_images=True)
    assert paths == ["/x.png"] and f"<|im_start|>user\n{VISION_TOKENS}make it warmer" in text
    assert "generate_image" in text and text.endswith("<|im_start|>assistant\n")
    text, paths = _render(_messages("/x.png"), [], see_images=False)
    assert paths == [] and VISION_TOKENS not in text


def test_chat_sees_the_image_and_stops_at_max_tokens(tiny_vl, tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (56, 56), (200, 120, 40)).save(path)
    planner = TransformersVLPlanner(_settings(see_images=True), model=tiny_vl["model"], processor=tiny_vl["processor"])
    reply = planner.chat(_messages(str(path)), plan_json_schemas()[:1])
    assert isinstance(reply, PlannerReply)
    assert 1 <= planner.last_timing["new_tokens"] <= 6
    with_image = planner.last_timing["prompt_tokens"]
    planner.chat(_messages(), plan_json_schemas()[:1])
    # the processor expanded <|image_pad|> into the image's patch tokens
    assert with_image > planner.last_timing["prompt_tokens"] + 1


@pytest.mark.parametrize("family", ["qwen-image", "qwen-image-2.1"])
def test_share_with_engine_uses_the_engines_own_text_encoder(family):
    """The real engine registers its pipeline's text encoder when it loads; the planner then holds
    the very same model and processor (one copy), and both still run."""
    from tools.engines import clear_engines, get_engine

    profile = load_profile("tiny", {"planner": {"kind": "transformers", "model": "unused-when-shared",
                                                "share_with_engine": True, "max_tokens": 4},
                                    "engine": {"family": family, "seed_base": 4242}})  # a fresh engine
    key = shared_models.text_encoder_key(profile.engine)
    assert shared_models.lookup(key) is None
    engine = get_engine(profile.engine, profile="tiny")
    try:
        generate, edit = engine.generate_pipeline(), engine.edit_pipeline()
        planner = build_planner(profile)
        assert isinstance(planner, TransformersVLPlanner)
        assert planner.model is generate.text_encoder is edit.text_encoder  # no second copy was loaded
        assert planner.processor is engine._random_components()["processor"]
        if family == "qwen-image":
            assert edit.processor is planner.processor and generate.tokenizer is planner.processor.tokenizer
        else:
            assert generate.processor is planner.processor
        planner.chat(_messages(), [])
        assert planner.last_timing["new_tokens"] >= 1
        width, height = engine.native_size("1:1")
        assert engine.generate("a red cube", width=width, height=height, seed=1)[0].size == (width, height)
    finally:
        clear_engines()
    assert shared_models.lookup(key) is None  # dropped with the engine


def test_an_engine_built_after_the_planner_uses_the_planners_copy(tiny_vl):
    """The other order: whoever loads first, the second side gets the same objects."""
    from tools.engines import clear_engines, get_engine

    profile = load_profile("tiny", {"engine": {"seed_base": 4343}})
    key = shared_models.text_encoder_key(profile.engine)
    loaded = shared_models.get_or_load(key, lambda: tiny_vl)  # what the planner's `model` does first
    assert loaded is tiny_vl
    engine = get_engine(profile.engine)
    try:
        assert engine.generate_pipeline().text_encoder is tiny_vl["model"]
        assert engine.edit_pipeline().processor is tiny_vl["processor"]
    finally:
        clear_engines()


def test_a_missing_checkpoint_is_a_clear_error():
    from tools.errors import ModelUnavailableError

    planner = TransformersVLPlanner(PlannerSettings(kind="transformers", model=None))
    with pytest.raises(ModelUnavailableError, match="planner.model"):
        planner.chat(_messages(), [])
