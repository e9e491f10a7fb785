"""Settings of the tools room, one pydantic model per concern.

A profile (`agent.config.Profile`) is composed of these plus the planner; each tool-room
component takes only the section it needs, so tools can be built and tested without the agent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from tools.dbfile import is_postgres


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

    # `diffusers`: the pipelines in this process (below). `openai-images`: a server of OpenAI's Images
    # API (another Atelier, vLLM-Omni, SGLang...) at `base_url`: the way to put many GPUs behind one
    # Atelier; screens, face checks, drift control, watermark and credentials stay here.
    kind: Literal["diffusers", "openai-images"] = "diffusers"
    base_url: str | None = None  # openai-images: e.g. http://gpu-1:8000/v1
    model: str | None = None  # openai-images: the model name that server serves
    api_key_env: str = "ATELIER_ENGINE_API_KEY"  # openai-images: the environment variable holding its key
    timeout_s: float = Field(default=600.0, gt=0)  # openai-images: per request
    family: Literal["qwen-image", "qwen-image-2.1"] = "qwen-image"
    # `random`: the real architectures, tiny configs, random weights, built in code (tests, CI).
    # `random-full`: the real full-size architectures with random weights (GPU benchmarks).
    # `hub`: real checkpoints from the model hub / local paths.
    source: Literal["random", "random-full", "hub"] = "random"
    # `random-full` only: every stack (transformer, text encoder, vision tower) cut to this many
    # blocks, all widths kept: the real shapes and dtypes cheaply (the CPU shape tests).
    random_layers: int | None = Field(default=None, ge=1)
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
    seed_base: int = 0  # seeds how the random-weight test models are built (not the pictures)
    # The seed of every picture whose call names none (a chat's Seed setting): the same seed and
    # request give the same image. None: a new random seed each time.
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)


# Same person below these embedding distances, one operating point per backend: each measures its
# own way. dlib: L2 between 128-d embeddings, 0.6 (dlib's published operating point). insightface:
# cosine distance (1 - cosine similarity) of normalised ArcFace embeddings, 0.6 = similarity 0.4,
# insightface 2.1's own "Same Person" default (insightface/gui/core/constants.py DEFAULT_THRESHOLD,
# used by gui/core/recognition.py compare_embeddings); profiles repeat them with their sources.
DEFAULT_THRESHOLDS: dict[str, float] = {"dlib": 0.6, "insightface": 0.6}


class IdentitySettings(BaseModel):
    backend: Literal["dlib", "insightface", "none"] = "dlib"
    # Per backend (missing entries: DEFAULT_THRESHOLDS); a fallback backend is judged by its own.
    thresholds: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    # The threshold `backend` is judged by; unset: thresholds[backend] (a chat or --set overrides it).
    max_distance: float = 0.6
    max_attempts: int = 3
    insightface_model: str = "buffalo_l"
    insightface_root: str | None = None  # None: ~/.insightface (its files in <root>/models/<model>/)
    # When insightface cannot run (not installed, weights not on disk): "dlib" checks faces with
    # dlib instead and every result says so; None: the gate fails with that one line.
    fallback: Literal["dlib"] | None = None

    @field_validator("thresholds")
    @classmethod
    def _with_defaults(cls, value: dict[str, float]) -> dict[str, float]:
        return {**DEFAULT_THRESHOLDS, **value}

    @model_validator(mode="before")
    @classmethod
    def _backend_threshold(cls, data):
        if isinstance(data, dict) and data.get("max_distance") is None:
            thresholds = {**DEFAULT_THRESHOLDS, **(data.get("thresholds") or {})}
            backend = data.get("backend", "dlib")
            if backend in thresholds:
                data = {**data, "max_distance": thresholds[backend]}
        return data

    def threshold(self, backend: str) -> float:
        """The distance below which `backend` calls two faces the same person."""
        if backend == self.backend:
            return self.max_distance
        return self.thresholds.get(backend, self.max_distance)


class SafetySettings(BaseModel):
    lists_dir: str | None = None  # None: the packaged configs/safety
    nsfw_backend: Literal["nudenet", "none"] = "nudenet"  # falls back to none if not installed
    nsfw_threshold: float = 0.6
    gallery_dir: str | None = None  # public-figure face gallery (embeddings)
    gallery_max_distance: float = 0.5
    # The guard model behind the rules (tools.safety.guard): "gguf" (the offline planner's Qwen GGUF
    # scoring the labels of prompts/safety/guard.md), "qwen3guard" (Qwen3Guard-Gen via transformers,
    # `guard_model`), "none" (rules and word lists alone).
    guard_backend: Literal["none", "gguf", "qwen3guard"] = "none"
    guard_model: str = "Qwen/Qwen3Guard-Gen-0.6B"  # qwen3guard: a hub name or a local path
    guard_device: str = "cuda"
    guard_strict: bool = False  # qwen3guard: refuse "Controversial" too
    guard_calibration: str | None = None  # None: the packaged configs/safety/guard_calibration.json


class ProvenanceSettings(BaseModel):
    watermark: bool = True
    watermark_rivagan: bool = False  # an extra learned layer under the id mark; pair it with dwtdctsvd
    # Which invisible watermark carries the id: "lattice" (the default: luminance, self-checking id
    # under a key, read on any machine; survives rescaling, rotation, big crops, grayscale and
    # screenshots; `tools/provenance/lattice.py`), "dwtdctsvd" (chroma; read against this data
    # root's registry; survives none of those) or "both" (each layer; ~2 dB lower PSNR). Figures:
    # README, `atelier eval watermark --scheme`.
    watermark_scheme: Literal["dwtdctsvd", "lattice", "both"] = "lattice"
    # Key of the lattice watermark: None = the public key in the code (any Atelier reads the id);
    # a private string makes marks only its holders can read (verify tries it and the public one).
    watermark_key: str | None = None
    c2pa: bool = True
    key_dir: str | None = None  # None: <data_root>/keys (a dev cert is created on first run)
    claim_generator: str = "Atelier"
    # The manifest says what was done (tool, look parameters), not what the person wrote: their
    # prompt or instruction goes in only when this is true. Image refs never do.
    include_prompt: bool = False


class LimitSettings(BaseModel):
    per_user: str = "30/minute;500/day"  # `limits` library notation; per key (user, or client address)
    # Where the counts live. None: the database of `store.url` when it is Postgres, else
    # <store root>/ratelimits.sqlite (shared by every process on the data root); any `limits`
    # storage URL (postgresql://..., redis://..., memcached://...) to share them across machines.
    storage: str | None = None
    # One writer per conversation, across processes: a turn holds a lease on its thread in the
    # sessions database, renewed while it runs; a lease not renewed for `thread_lease_s` (a crashed
    # process) expires. A second request waits up to `thread_busy_wait_s` (generative turns take
    # a while), then gets "this chat is busy" (ThreadBusyError, HTTP 409).
    thread_busy_wait_s: float = Field(30.0, ge=0)
    thread_lease_s: float = Field(30.0, ge=1)
    max_upload_bytes: int = 30 * 1024 * 1024
    max_pixels: int = 50_000_000  # decompression-bomb guard
    max_side: int = 12_000
    # Working-size budget: an upload within the hard limits above but bigger than this is stored
    # and processed downscaled to fit (its original size in the version's `resized_from`), so
    # every tool step works on at most this many pixels. Measured (bench/upload_budget.py, tiny
    # profile, 2 CPUs) for `/adjust` of a 7000x7000 PNG: 16 MP ~14 s, 12 MP ~10 s, 8 MP ~5 s
    # (peak RSS 0.66, 0.46, 0.44 GB; 49 MP unbounded: 58 s, 7.5 GB before the tool fixes).
    max_working_pixels: int = 8_388_608  # 8 MP (2896 x 2896, 4096 x 2048)
    max_working_side: int = 4096
    # The longest text a person may send into one turn (chat message, slash command, a text
    # argument of a direct tool call). 4000 characters is about 1000 tokens: several times the
    # longest tool text of the contract (a 2000-character prompt or instruction), far below the
    # planner's and the guard model's context, and the screens' cost grows with the length.
    max_prompt_chars: int = Field(4000, ge=1)
    # Images attached to one message (any surface), counted before any is decoded or fetched: a
    # scene plus a few references is the most a turn uses.
    max_images_per_turn: int = Field(6, ge=1)
    # The largest HTTP request body (OpenAI-compatible API), refused before it is parsed. None:
    # room for 4 uploads at max_upload_bytes as base64 (4/3 larger) plus 1 MiB of text: chat apps
    # resend a conversation's earlier images with every turn. 160 MiB + 1 MiB with the defaults.
    max_request_bytes: int | None = Field(None, ge=1)

    def request_bytes_limit(self) -> int:
        """`max_request_bytes`, or the default that follows `max_upload_bytes`."""
        if self.max_request_bytes is not None:
            return self.max_request_bytes
        return 4 * -(-self.max_upload_bytes * 4 // 3) + 2**20


class StoreSettings(BaseModel):
    root: str = Field(default_factory=default_data_root)  # data dir (local path)
    images: str | None = None  # fsspec URL or path; None: <root>/images
    # One database for everything that keeps rows: a `postgresql://user:password@host/db` URL puts
    # sessions (checkpoints and thread leases), the audit log, rate limits and the chat app's
    # threads in that PostgreSQL database, so several Atelier processes (machines) behind a load
    # balancer share them. None: a SQLite file per store under `root`. The fields below override it.
    url: str | None = None
    sessions: str | None = None  # sqlite path or postgres URL; None: `url`, else <root>/sessions.sqlite
    audit: str | None = None  # sqlite path or postgres URL; None: `url`, else <root>/audit.sqlite
    threads: str | None = None  # the chat app's threads; None: `url`, else <root>/ui/threads.sqlite
    # the chat app's element files (the pictures of stored threads): a path or any fsspec URL that
    # every chat-app process reaches; None: <root>/ui/files
    files: str | None = None

    @field_validator("url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is not None and not is_postgres(value):
            raise ValueError("store.url is a PostgreSQL URL (postgresql://user:password@host:port/database); "
                             "leave it unset for SQLite files under store.root")
        return value

    def images_url(self) -> str:
        return self.images or str(Path(self.root) / "images")

    def sessions_url(self) -> str:
        return self.sessions or self.url or str(Path(self.root) / "sessions.sqlite")

    def audit_url(self) -> str:
        return self.audit or self.url or str(Path(self.root) / "audit.sqlite")

    def threads_url(self) -> str | None:
        """The chat app's thread database when it is not the default SQLite file (None)."""
        return self.threads or self.url

    def ratelimits_url(self) -> str:
        """Where the rate-limit counts live when `limits.storage` is not set: the database of
        `url`, else a SQLite file under the root."""
        if self.url:
            return self.url
        return str(Path(self.root) / "ratelimits.sqlite")
