"""The Qwen-VL planner through transformers (Qwen2.5-VL / Qwen3-VL), on a GPU; it sees images.

The prompt is the Qwen chat format with the tools in the system turn (the same rendering as the
GGUF planner, `agent.planners.gguf.render_qwen`), with `<|vision_start|><|image_pad|><|vision_end|>`
for each image a user message attaches (`image_paths`, set by the graph for vision planners).
Images are prepared with `qwen-vl-utils` when it is installed (it needs torchvision, so it is
imported inside the call; without it the processor resizes the PIL images itself). Output is Qwen's
native `<tool_call>` text, read by `agent.planners.parsing`.

Decoding uses a static KV cache; with `planner.compile` transformers compiles the decoding step
(CUDA graphs, "reduce-overhead"), which is what makes a ~64-token call fast on a GPU.

With `planner.share_with_engine` the model is the image pipeline's text encoder: both sides get it
from `tools.shared_models` under `text_encoder_key(profile.engine)`, so it is loaded once.
"""

from __future__ import annotations

import time
from typing import Any

from agent.planners.base import ChatModel, PlannerReply
from tools import shared_models
from tools.errors import ModelUnavailableError

VISION_TOKENS = "<|vision_start|><|image_pad|><|vision_end|>"


def _render(messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, see_images: bool) -> tuple[str, list[str]]:
    """The prompt text and the image paths it refers to, in order."""
    from agent.planners.gguf import render_qwen

    paths: list[str] = []
    rendered = []
    for m in messages:
        attached = list(m.get("image_paths") or []) if see_images and m.get("role") == "user" else []
        if attached:
            m = {**m, "content": VISION_TOKENS * len(attached) + (m.get("content") or "")}
            paths.extend(attached)
        rendered.append(m)
    return render_qwen(rendered, tools), paths


def _load_images(paths: list[str]) -> list[Any]:
    try:
        from qwen_vl_utils import process_vision_info  # needs torchvision: imported here only
    except ImportError:
        from PIL import Image

        images = []
        for path in paths:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        return images
    images, _ = process_vision_info([{"role": "user", "content": [{"type": "image", "image": p} for p in paths]}])
    return images or []


class TransformersVLPlanner(ChatModel):
    """`ChatModel` over a transformers Qwen-VL model (see the module docstring)."""

    name = "transformers"

    def __init__(self, settings, *, shared_key: str | None = None, model=None, processor=None):
        self.settings = settings
        self.sees_images = bool(settings.see_images)
        self.shared_key = shared_key if settings.share_with_engine else None
        self._model, self._processor = model, processor
        self.last_timing: dict[str, float] = {}

    def _load(self) -> dict[str, Any]:
        settings = self.settings
        if not settings.model:
            raise ModelUnavailableError("planner.model is not set (e.g. Qwen/Qwen3-VL-8B-Instruct)")
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            model = AutoModelForImageTextToText.from_pretrained(
                settings.model, dtype=getattr(torch, settings.dtype), device_map=settings.device
            )
            processor = AutoProcessor.from_pretrained(settings.model)
        except OSError as err:
            raise ModelUnavailableError(f"planner model {settings.model}: {err}") from None
        return {"model": model.eval(), "processor": processor}

    @property
    def model(self):
        if self._model is None:
            key = self.shared_key or f"planner:{self.settings.model}:{self.settings.device}"
            loaded = shared_models.get_or_load(key, self._load)
            self._model, self._processor = loaded["model"], loaded["processor"]
        return self._model

    @property
    def processor(self):
        self.model  # noqa: B018 - loads both
        return self._processor

    def chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> PlannerReply:
        from agent.planners.parsing import parse_tool_calls

        model, processor = self.model, self.processor
        text, paths = _render(messages, tools, see_images=self.sees_images)
        images = _load_images(paths) if paths else None
        start = time.perf_counter()
        inputs = processor(text=[text], images=images, return_tensors="pt").to(model.device)
        new_tokens = self.generate(inputs)
        raw = processor.tokenizer.decode(new_tokens, skip_special_tokens=False).split("<|im_end|>")[0]
        self.last_timing = {
            "seconds": time.perf_counter() - start,
            "prompt_tokens": int(inputs["input_ids"].shape[1]),
            "new_tokens": int(new_tokens.shape[0]),
        }
        reply = parse_tool_calls(raw)
        reply.usage = {"prompt_tokens": self.last_timing["prompt_tokens"], "completion_tokens": self.last_timing["new_tokens"]}
        return reply

    def generate(self, inputs: dict[str, Any], *, min_new_tokens: int | None = None):
        """Decode after the prompt with a static KV cache (compiled when `planner.compile`);
        returns the new token ids. `min_new_tokens` is for benchmarks that need a fixed length."""
        import torch

        model, tokenizer = self.model, self.processor.tokenizer
        sampling = self.settings.temperature > 0
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                max_new_tokens=self.settings.max_tokens,
                min_new_tokens=min_new_tokens,
                do_sample=sampling,
                temperature=self.settings.temperature if sampling else None,
                top_p=None, top_k=None,
                cache_implementation="static",
                disable_compile=not self.settings.compile,
                eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                pad_token_id=tokenizer.pad_token_id,
            )
        return output[0, inputs["input_ids"].shape[1]:]
