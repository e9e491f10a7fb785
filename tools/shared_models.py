"""Models loaded once per process and shared by every component that needs the same checkpoint.

Qwen-Image's text encoder is a Qwen2.5-VL (Qwen-Image 2.1: a Qwen3-VL) chat model. When the
planner is the same checkpoint (`planner.share_with_engine`), the engine and the transformers
planner meet here instead of loading two copies: whichever needs it first loads it with
`get_or_load(key, loader)`, the other gets the same objects. `text_encoder_key(engine)` is the key
both sides use for the pipeline's text encoder; its value is `{"model": <...ForConditionalGeneration>,
"processor": <its AutoProcessor>}`. Nothing here imports an engine or the agent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from tools.settings import EngineSettings

_lock = threading.RLock()
_models: dict[str, Any] = {}


def text_encoder_key(engine: EngineSettings) -> str:
    """The registry key of the text encoder (+ processor) of the pipeline `engine` builds.

    Random-weight encoders also differ by seed (and the full-size ones by dtype): two engines
    share one only when it would be the same weights."""
    key = f"text_encoder:{engine.family}:{engine.source}:{engine.generate_model or ''}:{engine.device}"
    if engine.source != "hub":
        key += f":seed={engine.seed_base}:{engine.dtype if engine.source == 'random-full' else 'float32'}"
        key += f":layers={engine.random_layers}" if engine.source == "random-full" else ""
    return key


def register(key: str, value: Any) -> None:
    with _lock:
        _models[key] = value


def lookup(key: str) -> Any | None:
    with _lock:
        return _models.get(key)


def get_or_load(key: str, loader: Callable[[], Any]) -> Any:
    """The value under `key`, loading (once, under a lock) and registering it when missing."""
    with _lock:
        if key not in _models:
            _models[key] = loader()
        return _models[key]


def forget(key: str) -> None:
    with _lock:
        _models.pop(key, None)
