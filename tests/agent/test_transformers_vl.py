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
from tools import shared_models
from tools.schemas import tool_json_schemas


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
    text, paths = _render(_messages("/x.png"), tool_json_schemas()[:1], see_images=True)
    assert paths == ["/x.png"] and f"<|im_start|>user\n{VISION_TOKENS}make it warmer" in text
    assert "generate_image" in text and text.endswith("<|im_start|>assistant\n")
    text, paths = _render(_messages("/x.png"), [], see_images=False)
    assert paths == [] and VISION_TOKENS not in text


def test_chat_sees_the_image_and_stops_at_max_tokens(tiny_vl, tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (56, 56), (200, 120, 40)).save(path)
    planner = TransformersVLPlanner(_settings(see_images=True), model=tiny_vl["model"], processor=tiny_vl["processor"])
    reply = planner.chat(_messages(str(path)), tool_json_schemas()[:1])
    assert isinstance(reply, PlannerReply)
    assert 1 <= planner.last_timing["new_tokens"] <= 6
    with_image = planner.last_timing["prompt_tokens"]
    planner.chat(_messages(), tool_json_schemas()[:1])
    # the processor expanded <|image_pad|> into the image's patch tokens
    assert with_image > planner.last_timing["prompt_tokens"] + 1


def test_share_with_engine_reuses_the_registered_text_encoder(tiny_vl):
    profile = load_profile("tiny", {"planner": {"kind": "transformers", "model": "unused-when-shared",
                                                "share_with_engine": True, "max_tokens": 4}})
    key = shared_models.text_encoder_key(profile.engine)
    shared_models.register(key, tiny_vl)  # what the engine does when it loads its pipeline
    try:
        planner = build_planner(profile)
        assert isinstance(planner, TransformersVLPlanner)
        assert planner.model is tiny_vl["model"]  # no second copy was loaded
        planner.chat(_messages(), [])
        assert planner.last_timing["new_tokens"] >= 1
    finally:
        shared_models.forget(key)


def test_a_missing_checkpoint_is_a_clear_error():
    from tools.errors import ModelUnavailableError

    planner = TransformersVLPlanner(PlannerSettings(kind="transformers", model=None))
    with pytest.raises(ModelUnavailableError, match="planner.model"):
        planner.chat(_messages(), [])
