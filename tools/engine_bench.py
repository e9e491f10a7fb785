"""Engine benchmark: per-step latency, per-tool end-to-end latency and peak memory.

Used by `atelier bench engines` and `python bench/engines.py`. Prints figures; asserts nothing.
With `random_weights`, a hub profile builds its full-size architectures with random weights
(`source: random-full`), so a GPU can be measured without downloading checkpoints.
"""

from __future__ import annotations

import gc
import os
import resource
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, TextIO

import numpy as np
from PIL import Image

TOOLS_MEASURED = ("generate_image", "edit_image", "relight_image", "reframe_image", "adjust_image", "revert")


def _rss_peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 if sys.platform != "darwin" else peak / (1024.0 * 1024.0)


class _Memory:
    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.cuda = device.startswith("cuda") and torch.cuda.is_available()

    def reset(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()

    def peak(self) -> str:
        if self.cuda:
            return f"{self.torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (CUDA max allocated)"
        return f"{_rss_peak_mb():.0f} MiB (process peak RSS)"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()


def bench_settings(profile, *, random_weights: bool, size: int | None, steps: int | None):
    """The engine and identity settings the benchmark runs with."""
    engine = profile.engine.model_copy(deep=True)
    if random_weights and engine.source == "hub":
        engine.source = "random-full"
    if steps:
        engine.steps = steps
    if size:
        engine.sizes = {**(engine.sizes or {}), "1:1": (size, size)}
        engine.edit_vae_area = size * size
    identity = profile.identity.model_copy(deep=True)
    return engine, identity


def _timed(fn: Callable[[], Any], memory: _Memory) -> tuple[float, Any]:
    memory.sync()
    t0 = time.perf_counter()
    out = fn()
    memory.sync()
    return time.perf_counter() - t0, out


def run(
    profile,
    *,
    random_weights: bool = False,
    size: int | None = None,
    steps: int | None = None,
    repeats: int = 3,
    tools: tuple[str, ...] = TOOLS_MEASURED,
    out: TextIO = sys.stdout,
) -> dict[str, Any]:
    from tools.engines import get_engine
    from tools.errors import ModelUnavailableError
    from tools.identity import FaceAnalyzer
    from tools.image_tools import ToolContext, run_tool
    from tools.store import ImageStore

    engine_settings, identity = bench_settings(profile, random_weights=random_weights, size=size, steps=steps)
    memory = _Memory(engine_settings.device)
    analyzer = FaceAnalyzer(identity)
    try:
        analyzer.faces(Image.new("RGB", (32, 32)))
    except ModelUnavailableError as err:
        print(f"note: {err}; measuring with the dlib face analyser instead", file=out)
        identity.backend = "dlib"
        identity.max_distance = identity.thresholds["dlib"]
        analyzer = FaceAnalyzer(identity)

    engine = get_engine(engine_settings, profile=profile.name)
    width, height = engine.native_size("1:1")
    print(f"profile {profile.name}: family {engine_settings.family}, source {engine_settings.source}, "
          f"device {engine_settings.device}, dtype {engine_settings.dtype}, {width}x{height}, "
          f"{engine_settings.steps} steps, torch threads {memory.torch.get_num_threads()}", file=out)

    t_build, _ = _timed(lambda: (engine.generate_pipeline(), engine.edit_pipeline()), memory)
    print(f"build pipelines: {t_build:.2f} s; peak memory {memory.peak()}", file=out)

    figures: dict[str, Any] = {"profile": profile.name, "size": [width, height], "steps": engine_settings.steps}

    # -- per-step latency: denoising steps of generate, from the progress callback's clock
    stamps: list[float] = []

    def progress(step: int, total: int) -> None:
        memory.sync()
        stamps.append(time.perf_counter())

    engine.generate("warm-up", width=width, height=height, seed=0, progress=None)  # warm-up (and compile)
    step_times: list[float] = []
    for r in range(repeats):
        stamps.clear()
        memory.sync()
        start = time.perf_counter()
        engine.generate("a lighthouse on a cliff at dusk", width=width, height=height, seed=r, progress=progress)
        points = [start, *stamps]
        # the first interval includes text encoding; steps 2..n are pure denoising steps
        step_times.extend(np.diff(points)[1:].tolist() if len(points) > 2 else np.diff(points).tolist())
    per_step = statistics.median(step_times) if step_times else float("nan")
    figures["step_s"] = per_step
    print(f"denoising step ({width}x{height}): median {per_step * 1000:.1f} ms "
          f"(min {min(step_times) * 1000:.1f}, max {max(step_times) * 1000:.1f}, n={len(step_times)})", file=out)

    # -- per-tool end-to-end latency through run_tool (validation, store, engine, identity, staging)
    with tempfile.TemporaryDirectory(prefix="atelier-bench-") as root:
        store = ImageStore(os.path.join(root, "images"))
        rng = np.random.default_rng(0)
        photo = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        ref = store.put(photo, session="bench", origin="upload").ref
        ctx = ToolContext(store=store, engine=engine_settings, identity=identity, session="bench",
                          analyzer=analyzer, profile=profile.name)
        calls = {
            "generate_image": {"prompt": "a red bicycle against a blue wall", "seed": 1},
            "edit_image": {"image": ref, "instruction": "make the wall green"},
            "relight_image": {"image": ref, "direction": "left", "color_temperature": 3200},
            "reframe_image": {"image": ref, "aspect_ratio": "16:9", "zoom": 0.8},
            "adjust_image": {"image": ref, "exposure_ev": 0.5, "white_balance_k": 5000, "crop": [0, 0, 0.9, 0.9]},
            "revert": {"image": ref},
        }
        figures["tools"] = {}
        for name in tools:
            run_tool(ctx, name, calls[name])  # warm-up
            times = []
            memory.reset()
            for _ in range(repeats):
                elapsed, outcome = _timed(lambda: run_tool(ctx, name, calls[name]), memory)
                times.append(elapsed)
                for staged in outcome.staged:
                    store.discard_staged(staged.staging_id)
            median = statistics.median(times)
            figures["tools"][name] = median
            print(f"{name:15s} end to end: median {median * 1000:8.1f} ms  (min {min(times) * 1000:.1f}, "
                  f"n={repeats}); peak memory {memory.peak()}", file=out)
    figures["peak_memory"] = memory.peak()
    gc.collect()
    return figures
