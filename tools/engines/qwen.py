"""The diffusers engine for both Qwen-Image families.

family `qwen-image`:     `QwenImagePipeline` (generate) + `QwenImageEditPlusPipeline` (edit, 2511)
family `qwen-image-2.1`: `QwenImage21Pipeline` (generation and editing in one model)

Sources: `random` (tiny real architectures with random weights, built in code), `random-full`
(full-size architectures with random weights, for GPU benchmarks), `hub` (real checkpoints).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import threading
import types
from functools import lru_cache
from typing import Any

import torch

from tools import shared_models
from tools.engines.base import ImageEngine, Progress
from tools.errors import CancelledError, EngineError, ModelUnavailableError
from tools.settings import EngineSettings, LoraSpec

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# -- edit pipeline with the profile's resize targets ---------------------------------------------

@lru_cache(maxsize=None)
def _edit_plus_call(condition_area: int, vae_area: int):
    """`QwenImageEditPlusPipeline.__call__` with other internal resize targets.

    diffusers reads the targets from module constants (`CONDITION_IMAGE_SIZE = 384 * 384` for the
    Qwen2.5-VL condition image, `VAE_IMAGE_SIZE = 1024 * 1024` for the VAE condition image) inside
    `__call__`. Rather than copy the 300-line method or mutate the module (which would change every
    pipeline in the process, and race between threads), we rebind the *same* function code to a
    private copy of its globals with the two constants replaced. Everything else in the call is
    diffusers' own code, so upgrades keep working as long as the constant names stay.
    """
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as module

    raw = inspect.unwrap(module.QwenImageEditPlusPipeline.__call__)
    if not {"CONDITION_IMAGE_SIZE", "VAE_IMAGE_SIZE"} <= set(raw.__code__.co_names):
        raise EngineError("this diffusers version no longer exposes the edit resize targets; pin diffusers")
    namespace = dict(raw.__globals__)
    namespace.update(CONDITION_IMAGE_SIZE=int(condition_area), VAE_IMAGE_SIZE=int(vae_area))
    fn = types.FunctionType(raw.__code__, namespace, raw.__name__, raw.__defaults__, raw.__closure__)
    fn.__kwdefaults__ = raw.__kwdefaults__
    return torch.no_grad()(fn)


def edit_plus_pipeline_class():
    from diffusers import QwenImageEditPlusPipeline

    class AtelierEditPlusPipeline(QwenImageEditPlusPipeline):
        """`QwenImageEditPlusPipeline` whose internal resize targets are instance attributes."""

        condition_image_area: int = 384 * 384  # Qwen2.5-VL sees the inputs at this pixel area
        vae_image_area: int = 1024 * 1024  # the VAE encodes the inputs at this pixel area

        def __call__(self, *args, **kwargs):
            return _edit_plus_call(self.condition_image_area, self.vae_image_area)(self, *args, **kwargs)

    return AtelierEditPlusPipeline


# -- helpers ------------------------------------------------------------------------------------

def _is_oom(err: BaseException) -> bool:
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t)
    return isinstance(err, oom_types) or "out of memory" in str(err).lower()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


class DiffusersQwenEngine(ImageEngine):
    """One engine per settings; pipelines are built on first use and then kept."""

    def __init__(self, settings: EngineSettings, *, profile: str | None = None):
        self.settings = settings
        self.profile = profile
        self.dtype = DTYPES[settings.dtype]
        self._lock = threading.RLock()  # one diffusion call at a time per engine
        self._components: dict[str, Any] | None = None
        self._generate_pipe = None
        self._edit_pipe = None
        self._loaded_loras: set[int] = set()  # ids of the pipelines whose LoRAs are loaded

    # -- building ---------------------------------------------------------------------------
    def _check_device(self) -> None:
        device = self.settings.device
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError(
                f"{self._describe()} runs the image engine on {device}, but no CUDA GPU is available here; "
                "use a GPU machine or --set engine.device=cpu"
            )

    def _random_components(self) -> dict[str, Any]:
        self._check_device()
        if self._components is None:
            from tools.engines import tiny

            full = self.settings.source == "random-full"
            build = tiny.qwen_image_components if self.settings.family == "qwen-image" else tiny.qwen_image_21_components
            shared = shared_models.lookup(self._text_encoder_key())  # a planner's (or engine's) copy
            if full:
                # Build the full-size modules directly on the device in the target dtype.
                previous = torch.get_default_dtype()
                torch.set_default_dtype(self.dtype)
                try:
                    with torch.device(self.settings.device):
                        components = build(full=True, seed=self.settings.seed_base, text_encoder=shared is None,
                                           layers=self.settings.random_layers)
                finally:
                    torch.set_default_dtype(previous)
            else:
                components = build(full=False, seed=self.settings.seed_base, text_encoder=shared is None)
            if shared is None:
                shared = self._share_text_encoder(components["text_encoder"], components["processor"])
            self._components = self._with_text_encoder(components, shared)
        return self._components

    # -- the text encoder, shared with a planner of the same checkpoint ----------------------------
    def _text_encoder_key(self) -> str:
        return shared_models.text_encoder_key(self.settings)

    def _share_text_encoder(self, model, processor) -> dict[str, Any]:
        """Register the pipeline's text encoder + processor in `tools.shared_models` (unless someone
        was first: then theirs is used), so a transformers planner with `share_with_engine` gets
        these very objects instead of loading the checkpoint a second time."""
        return shared_models.get_or_load(self._text_encoder_key(), lambda: {"model": model, "processor": processor})

    @staticmethod
    def _with_text_encoder(components: dict[str, Any], shared: dict[str, Any]) -> dict[str, Any]:
        out = dict(components, text_encoder=shared["model"], processor=shared["processor"])
        if "tokenizer" in out:
            out["tokenizer"] = shared["processor"].tokenizer
        return out

    def _hub_shared(self, kind: str) -> dict[str, Any]:
        """`from_pretrained` overrides for the text encoder when one is registered already."""
        shared = shared_models.lookup(self._text_encoder_key())
        if shared is None:
            return {}
        out = {"text_encoder": shared["model"]}
        if self.settings.family == "qwen-image":
            out["tokenizer"] = shared["processor"].tokenizer
        if kind == "edit" or self.settings.family != "qwen-image":
            out["processor"] = shared["processor"]
        return out

    def _register_hub_text_encoder(self, pipe) -> None:
        processor = getattr(pipe, "processor", None)
        if processor is None and self.settings.edit_model:
            # QwenImagePipeline keeps only the tokenizer; the edit checkpoint has the full processor
            # (no weights: a few small files), which a vision planner needs.
            from transformers import AutoProcessor

            try:
                processor = AutoProcessor.from_pretrained(
                    self.settings.edit_model, subfolder="processor", **({"local_files_only": True} if _offline() else {})
                )
            except (OSError, ValueError, ImportError) as err:
                log.info("text encoder not shared: no processor for %s (%s)", self.settings.edit_model, err)
        if processor is not None and getattr(pipe, "text_encoder", None) is not None:
            self._share_text_encoder(pipe.text_encoder, processor)

    def _describe(self) -> str:
        who = f"profile {self.profile!r}" if self.profile else f"engine family {self.settings.family}"
        return who

    def _from_pretrained(self, cls, repo: str | None, **shared):
        if not repo:
            raise ModelUnavailableError(f"{self._describe()}: no model named (set engine.generate_model)")
        self._check_device()
        kwargs = dict(dtype=self.dtype, **shared)
        if _offline():
            kwargs["local_files_only"] = True
        try:
            return cls.from_pretrained(repo, **kwargs)
        except (OSError, ValueError) as err:  # missing files, gated repo, no network, not a pipeline folder
            text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            first = text.split(". ")[0].rstrip(".")
            raise ModelUnavailableError(
                f"{self._describe()}: the weights of {repo} are not available on this machine ({first[:160]}); "
                f"download them (`hf download {repo}`) or point the profile at a local folder"
            ) from None

    def _prepare(self, pipe, kind: str):
        pipe.set_progress_bar_config(disable=True)
        if self.settings.source == "random-full" or self.settings.source == "random":
            if not self.settings.cpu_offload:
                pipe.to(self.settings.device)
        if self.settings.cpu_offload:
            pipe.enable_model_cpu_offload(device=self.settings.device)
        elif self.settings.source == "hub":
            pipe.to(self.settings.device)
        if self.settings.compile:
            pipe.transformer.compile()
        self._load_loras(pipe, kind)
        return pipe

    def loras_for(self, kind: str) -> list[LoraSpec]:
        """The profile's LoRAs that belong to the `generate` or the `edit` pipeline."""
        if self.settings.family == "qwen-image-2.1":
            return list(self.settings.loras)  # one model generates and edits

        def target(spec: LoraSpec) -> str:
            return "edit" if spec.role in ("relight", "angles") else spec.pipeline

        return [spec for spec in self.settings.loras if target(spec) in (kind, "both")]

    def _load_loras(self, pipe, kind: str) -> None:
        """Load the pipeline's LoRAs once; which are active is set per call (`_set_adapters`)."""
        specs = self.loras_for(kind)
        if not specs or id(pipe) in self._loaded_loras:
            return
        try:
            import peft  # noqa: F401
        except ImportError:
            raise ModelUnavailableError(
                f"{self._describe()} lists LoRAs but `peft` is not installed (pip install 'qwen-atelier[gpu]')"
            ) from None
        for spec in specs:
            try:
                pipe.load_lora_weights(spec.repo, weight_name=spec.weight_name, adapter_name=spec.name)
            except (OSError, ValueError) as err:
                raise ModelUnavailableError(
                    f"{self._describe()}: LoRA {spec.name} ({spec.repo}) is not available ({str(err)[:160]})"
                ) from None
        self._loaded_loras.add(id(pipe))

    def generate_pipeline(self):
        with self._lock:
            if self._generate_pipe is None:
                if self.settings.family == "qwen-image":
                    from diffusers import QwenImagePipeline

                    if self.settings.source == "hub":
                        pipe = self._from_pretrained(QwenImagePipeline, self.settings.generate_model,
                                                     **self._hub_shared("generate"))
                        self._register_hub_text_encoder(pipe)
                    else:
                        comps = {k: v for k, v in self._random_components().items() if k != "processor"}
                        pipe = QwenImagePipeline(**comps)
                else:
                    pipe = self._pipeline_21()
                self._generate_pipe = self._prepare(pipe, "generate") if pipe is not self._edit_pipe else pipe
            return self._generate_pipe

    def edit_pipeline(self):
        with self._lock:
            if self._edit_pipe is None:
                if self.settings.family == "qwen-image":
                    cls = edit_plus_pipeline_class()
                    if self.settings.source == "hub":
                        shared = self._hub_shared("edit")
                        if self._generate_pipe is not None:  # same Qwen2.5-VL encoder and VAE: load once
                            shared.update(text_encoder=self._generate_pipe.text_encoder, vae=self._generate_pipe.vae)
                        pipe = self._from_pretrained(cls, self.settings.edit_model or self.settings.generate_model, **shared)
                        self._register_hub_text_encoder(pipe)
                    else:
                        pipe = cls(**self._random_components())
                    pipe.condition_image_area = self.edit_condition_area()
                    pipe.vae_image_area = self.edit_vae_area()
                    self._edit_pipe = self._prepare(pipe, "edit")
                else:
                    self._edit_pipe = self.generate_pipeline()
            return self._edit_pipe

    def _pipeline_21(self):
        from diffusers import QwenImage21Pipeline

        if self._edit_pipe is not None:
            return self._edit_pipe
        if self.settings.source == "hub":
            pipe = self._from_pretrained(QwenImage21Pipeline, self.settings.generate_model or self.settings.edit_model,
                                         **self._hub_shared("generate"))
            self._register_hub_text_encoder(pipe)
            return pipe
        return QwenImage21Pipeline(**self._random_components())

    # -- running ----------------------------------------------------------------------------
    def _steps(self, steps: int | None, few_step: bool, kind: str) -> tuple[int, list[str]]:
        """Steps and active adapters: the Lightning LoRA (if any) sets a few-step count."""
        lightning = [s for s in self.loras_for(kind) if s.role == "lightning"]
        if few_step and lightning:
            return (steps or lightning[0].steps or self.settings.steps), [s.name for s in lightning]
        return steps or self.settings.steps, []

    def _set_adapters(self, pipe, names: list[str], kind: str) -> None:
        specs = {s.name: s for s in self.loras_for(kind)}
        if not specs:
            return
        style = [s.name for s in specs.values() if s.role == "style"]
        active = list(dict.fromkeys([*names, *style]))
        if active:
            pipe.set_adapters(active, adapter_weights=[specs[n].scale for n in active])
        else:
            pipe.disable_lora()

    def adapter_names(self, role: str) -> list[str]:
        return [s.name for s in self.settings.loras if s.role == role]

    def _callback(self, progress: Progress | None, total: int):
        if progress is None:
            return None

        def on_step_end(pipe, step, timestep, callback_kwargs):
            progress(step + 1, total)  # may raise CancelledError: it propagates and stops the run
            return {}

        return on_step_end

    @contextlib.contextmanager
    def _running(self, what: str, width: int, height: int):
        threads = None
        if self.settings.source == "random" and self.settings.device == "cpu":
            # Tiny models are latency-bound: extra OpenMP threads only add synchronisation
            # (a 64x64 call goes from ~1.3 s to ~0.07 s on a busy 2-core machine).
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
        try:
            yield
        except CancelledError:
            raise
        except Exception as err:  # noqa: BLE001
            if _is_oom(err):
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise EngineError(
                    f"out of memory for a {width}x{height} {what} on {self.settings.device}; "
                    "try a smaller size, fewer images or a profile with CPU offload"
                ) from None
            raise
        finally:
            if threads is not None:
                torch.set_num_threads(threads)

    def _generators(self, seed: int, count: int):
        device = "cpu" if self.settings.cpu_offload else self.settings.device
        return [torch.Generator(device=device).manual_seed(int(seed) + i) for i in range(count)]

    def _cfg_kwargs(self, *, distilled: bool, negative_prompt: str | None) -> dict:
        """True-CFG arguments: none for distilled (Lightning) LoRAs; otherwise the profile's scale,
        which needs a negative prompt (a blank one is the model card's default)."""
        cfg = 1.0 if distilled else self.settings.true_cfg_scale
        if cfg > 1:
            return {"negative_prompt": negative_prompt or " ", "true_cfg_scale": cfg}
        return {"true_cfg_scale": 1.0}

    def generate(self, prompt, *, width, height, seed, steps=None, negative_prompt=None, count=1,
                 progress=None, few_step=True):
        pipe = self.generate_pipeline()
        with self._lock:
            n_steps, adapters = self._steps(steps, few_step, "generate")
            self._set_adapters(pipe, adapters, "generate")
            kwargs = dict(prompt=prompt, width=width, height=height, num_inference_steps=n_steps,
                          num_images_per_prompt=count, generator=self._generators(seed, count),
                          callback_on_step_end=self._callback(progress, n_steps))
            kwargs.update(self._cfg_kwargs(distilled=bool(adapters), negative_prompt=negative_prompt))
            with self._running("image", width, height):
                images = pipe(**kwargs).images
        return [img.convert("RGB") for img in images]

    def edit(self, instruction, images, *, seed, steps=None, width=None, height=None, progress=None,
             negative_prompt=None, adapters=(), few_step=True):
        if not images:
            raise EngineError("an edit needs at least one image")
        pipe = self.edit_pipeline()
        images = [img.convert("RGB") for img in images]
        if width is None or height is None:
            width, height = self.edit_size(*images[0].size)
        with self._lock:
            n_steps, lightning = self._steps(steps, few_step, "edit")
            self._set_adapters(pipe, [*lightning, *adapters], "edit")
            kwargs = dict(prompt=instruction, image=list(images), width=width, height=height,
                          num_inference_steps=n_steps, generator=self._generators(seed, 1)[0],
                          callback_on_step_end=self._callback(progress, n_steps))
            kwargs.update(self._cfg_kwargs(distilled=bool(lightning), negative_prompt=negative_prompt))
            if self.settings.family == "qwen-image-2.1":
                # One resize feeds both Qwen3-VL and the VAE in 2.1: its area is `output_resolution`^2.
                kwargs["output_resolution"] = int(round(math.sqrt(self.edit_vae_area())))
            with self._running("edit", width, height):
                out = pipe(**kwargs).images[0]
        return out.convert("RGB")
