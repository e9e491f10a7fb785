"""Latency of the transformers Qwen-VL planner: one ~64-token tool call after a ~1500-token prompt.

    python bench/planner_latency.py                          # tiny random Qwen2.5-VL on the CPU (code path)
    python bench/planner_latency.py --size full --device cuda --compile   # random Qwen3-VL-8B shapes on a GPU

Weights are random (the shapes are what matter for latency); the prompt is random token ids and
decoding is forced to exactly --new-tokens tokens, so runs are comparable. Prints one line per
mode: eager (no static cache), static cache, and static cache + torch.compile when --compile.
The first call of each mode is a warm-up (compilation) and is reported separately.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from agent.config import PlannerSettings
from agent.planners.transformers_vl import TransformersVLPlanner

# Qwen3-VL-8B-Instruct's published text and vision shapes (random weights here).
QWEN3_VL_8B_TEXT = dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                        num_key_value_heads=8, head_dim=128, vocab_size=151936,
                        rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20]})
QWEN3_VL_8B_VISION = dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                          patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                          deepstack_visual_indexes=[8, 16, 24])


def build(size: str, device: str, dtype: torch.dtype):
    from tools.engines.tiny import build_tokenizer, qwen_image_components

    if size == "tiny":
        parts = qwen_image_components(seed=0)
        return parts["text_encoder"].to(device, dtype), parts["processor"]
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tokenizer = build_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    config = Qwen3VLConfig(text_config=QWEN3_VL_8B_TEXT, vision_config=QWEN3_VL_8B_VISION, **ids)
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration(config).to(dtype).eval()
    parts = qwen_image_components(seed=0)  # a processor for the tokenizer (text only here)
    return model, parts["processor"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--prompt-tokens", type=int, default=1500)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also measure static cache + torch.compile")
    args = parser.parse_args()
    dtype_name = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    model, processor = build(args.size, args.device, getattr(torch, dtype_name))
    vocab = min(model.config.get_text_config().vocab_size, len(processor.tokenizer)) - 16
    torch.manual_seed(0)
    input_ids = torch.randint(300, max(vocab, 301), (1, args.prompt_tokens), device=args.device)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}), "
          f"{args.size} {type(model).__name__} {dtype_name}, prompt {args.prompt_tokens} tok, "
          f"{args.new_tokens} new tok, {args.runs} runs")
    modes = [("static", False)] + ([("static+compile", True)] if args.compile else [])
    eager = lambda: model.generate(**inputs, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,  # noqa: E731
                                   do_sample=False, disable_compile=True)
    results = {"eager (dynamic cache)": _time(eager, args.runs, args.device)}
    for name, compiled in modes:
        settings = PlannerSettings(kind="transformers", model="random", max_tokens=args.new_tokens,
                                   compile=compiled, device=args.device, dtype=dtype_name)
        planner = TransformersVLPlanner(settings, model=model, processor=processor)
        results[name] = _time(lambda: planner.generate(inputs, min_new_tokens=args.new_tokens), args.runs, args.device)
    for name, (first, times) in results.items():
        median = statistics.median(times)
        print(f"{name:24s} first {first:7.3f} s   median {median:7.3f} s   "
              f"{args.new_tokens / median:7.1f} tok/s (incl. prefill)")


def _time(fn, runs: int, device: str) -> tuple[float, list[float]]:
    def once() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    first = once()
    return first, [once() for _ in range(runs)]


if __name__ == "__main__":
    main()
