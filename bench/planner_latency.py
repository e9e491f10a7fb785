"""Latency of the transformers Qwen-VL planner: one ~64-token tool call after a ~1500-token prompt.

    python bench/planner_latency.py                          # tiny random Qwen2.5-VL on the CPU (code path)
    python bench/planner_latency.py --size full --device cuda --compile   # random Qwen3-VL-8B shapes on a GPU
    python bench/planner_latency.py --planner gguf --limit 5  # the offline GGUF planner on the dev set

`--planner gguf`: the real offline planner (profile `--profile`, default offline) decides the cases
of `--jsonl` (default ../shared/evals/planner_dev.jsonl; ~6 min for all of it on a small CPU, so
`--limit N` runs the first N) as a turn would (`agent.evals.plan_case`: one repair round when the
plan step would ask for it). Every model call is one decision; prints the model load time, how
the system prompt's state was obtained on the first call (restored from the file `make model`
writes, computed in this run, or already loaded) and the per-decision latency p50/p90/max.

Weights are random (the shapes are what matter for latency); the prompt is random token ids and
decoding is forced to exactly --new-tokens tokens, so runs are comparable. Prints one line per
mode: eager (no static cache), static cache, and static cache + torch.compile when --compile.
The first call of each mode is a warm-up (compilation) and is reported separately.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from agent.config import PlannerSettings
from agent.planners.transformers_vl import TransformersVLPlanner

DEV_SET = Path(__file__).resolve().parents[2] / "shared" / "evals" / "planner_dev.jsonl"

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
    parser.add_argument("--planner", choices=["transformers", "gguf"], default="transformers")
    parser.add_argument("--profile", default="offline", help="--planner gguf: the profile whose planner runs")
    parser.add_argument("--jsonl", default=str(DEV_SET), help="--planner gguf: eval cases, one JSON per line")
    parser.add_argument("--limit", type=int, default=None, help="--planner gguf: only the first N cases")
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--prompt-tokens", type=int, default=1500)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also measure static cache + torch.compile")
    args = parser.parse_args()
    if args.planner == "gguf":
        return gguf_main(args)
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


def gguf_main(args) -> None:
    from agent.config import load_profile
    from agent.evals import _percentile, load_cases, plan_case
    from agent.planners.gguf import GGUFPlanner
    from agent.intents import plan_json_schemas

    profile = load_profile(args.profile)
    cases = load_cases(args.jsonl)[: args.limit]
    planner = GGUFPlanner(profile.planner, root=profile.store.root)
    t0 = time.perf_counter()
    planner.llm  # noqa: B018 - load the model outside the timed decisions
    load_s = time.perf_counter() - t0
    decisions: list[dict] = []
    chat = planner.chat

    def timed_chat(messages, tools):
        start = time.perf_counter()
        reply = chat(messages, tools)
        decisions.append({"seconds": time.perf_counter() - start, "prefix": planner.prefix_state,
                          "prompt_tokens": (getattr(planner, "last_usage", None) or {}).get("prompt_tokens")})
        return reply

    planner.chat = timed_chat  # type: ignore[method-assign]
    tools = plan_json_schemas()  # what a turn sends
    for case in cases:
        plan_case(planner, case, tools, repair=True, screener=None)
    if not decisions:
        print("no decisions (no cases)")
        return
    times = [d["seconds"] for d in decisions]
    first = decisions[0]
    how = {"restored": "restored from the saved state (prepared by `make model`)",
           "computed": "COMPUTED in this run (not prepared: run `make model`)",
           "loaded": "already loaded in this process", "uncached": "not cached (ATELIER_PROMPT_CACHE=0)"}
    print(f"gguf planner ({profile.name}, {planner.settings.n_threads or 'default'} threads): model load {load_s:.1f} s, "
          f"{len(cases)} cases, {len(decisions)} decisions")
    print(f"system prompt state on the first decision: {how.get(first['prefix'], first['prefix'])}"
          + (f" ({planner._prefix_path})" if planner._prefix_path else ""))
    rest = times[1:] or times
    print(f"first decision {first['seconds']:.2f} s; per decision (all) p50 {_percentile(times, 0.5):.2f} s, "
          f"p90 {_percentile(times, 0.9):.2f} s, max {max(times):.2f} s; "
          f"after the first p50 {_percentile(rest, 0.5):.2f} s, p90 {_percentile(rest, 0.9):.2f} s")
    tokens = [d["prompt_tokens"] for d in decisions if d["prompt_tokens"]]
    if tokens:
        print(f"prompt tokens per decision: p50 {_percentile(tokens, 0.5):.0f}, max {max(tokens)}")


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
