"""Settings of the tools room, one pydantic model per concern.

A profile (`agent.config.Profile`) is composed of these plus the planner; each tool-room
component takes only the section it needs, so tools can be built and tested without the agent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field


def default_data_root() -> str:
    return os.environ.get("ATELIER_HOME", str(Path.home() / ".atelier"))


class LoraSpec(BaseModel):
    """A LoRA loaded once with the pipeline, e.g. Lightning few-step, relight, multiple angles."""

    name: str  # adapter name inside the pipeline
    repo: str  # hub repo id or local path
    weight_name: str | None = None
    role: Literal["lightning", "relight", "angles", "style"] = "style"
    scale: float = 1.0
    steps: int | None = None  # for `lightning`: the few-step count it is trained for
    # Which pipeline of the family it belongs to (qwen-image has two; 2.1 one model for both).
    # `relight` and `angles` LoRAs are edit LoRAs whatever this says.
    pipeline: Literal["generate", "edit", "both"] = "both"


class EngineSettings(BaseModel):
    """Which image engine to build and how."""

    family: Literal["qwen-image", "qwen-image-2.1"] = "qwen-image"
    # `random`: the real architectures, tiny configs, random weights, built in code (tests, CI).
    # `random-full`: the real full-size architectures with random weights (GPU benchmarks).
    # `hub`: real checkpoints from the model hub / local paths.
    source: Literal["random", "random-full", "hub"] = "random"
    generate_model: str | None = None  # e.g. Qwen/Qwen-Image-2512 or Qwen/Qwen-Image-2.1
    edit_model: str | None = None  # e.g. Qwen/Qwen-Image-Edit-2511 (None: same model edits)
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    steps: int = 2
    true_cfg_scale: float = 1.0
    # Native sizes per aspect ratio; None means the family's defaults (1328x1328, 1664x928, ...).
    sizes: dict[str, tuple[int, int]] | None = None
    # Internal resize targets of the edit pipelines (pixel area): the VL condition image
    # (384*384 in diffusers) and the VAE condition image (1024*1024). Tiny profiles shrink them.
    edit_condition_area: int | None = None
    edit_vae_area: int | None = None
    vae_scale_factor: int = 8
    loras: list[LoraSpec] = Field(default_factory=list)
    cpu_offload: bool = False
    compile: bool = False
    seed_base: int = 0


class IdentitySettings(BaseModel):
    backend: Literal["dlib", "insightface", "none"] = "dlib"
    # dlib: L2 distance between 128-d embeddings; < 0.6 is the same person.
    max_distance: float = 0.6
    max_attempts: int = 3
    insightface_model: str = "buffalo_l"
    insightface_root: str | None = None


class SafetySettings(BaseModel):
    lists_dir: str | None = None  # None: the packaged configs/safety
    nsfw_backend: Literal["nudenet", "none"] = "nudenet"  # falls back to none if not installed
    nsfw_threshold: float = 0.6
    gallery_dir: str | None = None  # public-figure face gallery (embeddings)
    gallery_max_distance: float = 0.5
    guard_backend: Literal["none", "planner", "qwen3guard"] = "none"


class ProvenanceSettings(BaseModel):
    watermark: bool = True
    watermark_rivagan: bool = False
    c2pa: bool = True
    key_dir: str | None = None  # None: <data_root>/keys (a dev cert is created on first run)
    claim_generator: str = "Atelier"


class LimitSettings(BaseModel):
    per_user: str = "30/minute;500/day"  # `limits` library notation
    max_upload_bytes: int = 30 * 1024 * 1024
    max_pixels: int = 50_000_000  # decompression-bomb guard
    max_side: int = 12_000


class StoreSettings(BaseModel):
    root: str = Field(default_factory=default_data_root)  # data dir (local path)
    images: str | None = None  # fsspec URL or path; None: <root>/images
    sessions: str | None = None  # sqlite path or postgres URL; None: <root>/sessions.sqlite
    audit: str | None = None  # sqlite path or postgres URL; None: <root>/audit.sqlite

    def images_url(self) -> str:
        return self.images or str(Path(self.root) / "images")

    def sessions_url(self) -> str:
        return self.sessions or str(Path(self.root) / "sessions.sqlite")

    def audit_url(self) -> str:
        return self.audit or str(Path(self.root) / "audit.sqlite")
