"""Image engines: `get_engine(settings)` returns the process-wide engine for those settings."""

from __future__ import annotations

import threading

from tools.engines.base import (
    FAMILY_MULTIPLE,
    QWEN_IMAGE_SIZES,
    ImageEngine,
    Progress,
    native_sizes,
    snap_dimensions,
)
from tools.settings import EngineSettings

_ENGINES: dict[str, ImageEngine] = {}
_LOCK = threading.Lock()


def get_engine(settings: EngineSettings, *, profile: str | None = None) -> ImageEngine:
    """The engine for `settings`, built once per process (same settings -> same engine)."""
    key = settings.model_dump_json()
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            if settings.kind == "openai-images":
                from tools.engines.openai_images import OpenAIImagesEngine

                engine = OpenAIImagesEngine(settings, profile=profile)
            else:
                from tools.engines.qwen import DiffusersQwenEngine

                engine = DiffusersQwenEngine(settings, profile=profile)
            _ENGINES[key] = engine
        return engine


def clear_engines() -> None:
    """Drop every cached engine and the text encoders they shared (`tools.shared_models`); their
    memory is freed once nothing else (a planner) holds them."""
    from tools import shared_models

    with _LOCK:
        for engine in _ENGINES.values():
            shared_models.forget(shared_models.text_encoder_key(engine.settings))
        _ENGINES.clear()


__all__ = [
    "FAMILY_MULTIPLE", "QWEN_IMAGE_SIZES", "ImageEngine", "Progress", "get_engine", "clear_engines",
    "native_sizes", "snap_dimensions",
]
