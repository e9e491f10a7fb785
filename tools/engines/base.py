"""The image-engine interface every backend implements, and the sizes each family draws at."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable, Sequence

from PIL import Image

from tools.settings import EngineSettings

Progress = Callable[[int, int], None]

# Native sizes of Qwen-Image (2512 / Edit 2511), from the model card (`aspect_ratios`), snapped to
# multiples of 16 (what the pipeline keeps: VAE factor 8 x patch 2).
QWEN_IMAGE_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1328, 1328),
    "16:9": (1664, 928),
    "9:16": (928, 1664),
    "4:3": (1472, 1104),
    "3:4": (1104, 1472),
    "3:2": (1584, 1056),
    "2:3": (1056, 1584),
}

# Pixel multiple each family keeps (VAE downsampling x patch size): anything else is cropped.
FAMILY_MULTIPLE = {"qwen-image": 16, "qwen-image-2.1": 32}
# The multiple diffusers' `calculate_dimensions` rounds to (every Qwen-Image edit pipeline and 2.1):
# the edit pipelines resize their VAE condition image to it, whatever the family keeps.
EDIT_MULTIPLE = 32
# Pixel area the family is trained at (Qwen-Image 2.1: 1024x1024 output resolution).
FAMILY_AREA = {"qwen-image": 1328 * 1328, "qwen-image-2.1": 1024 * 1024}
# Area of the tiny random-weight engines (tests): 160x160 — cheap (~0.2 s a 2-step call) and the
# smallest size at which the 48-bit invisible watermark still reads back reliably, so sealed
# tiny images verify end to end like real ones.
TINY_AREA = 160 * 160


def ratio_of(aspect_ratio: str) -> float:
    w, h = aspect_ratio.split(":")
    return float(w) / float(h)


def snap_dimensions(area: int, ratio: float, multiple: int = EDIT_MULTIPLE) -> tuple[int, int]:
    """Width and height of about `area` pixels at `ratio`, each a multiple of `multiple`.

    With the default multiple (32) this is diffusers' `calculate_dimensions` (nearest multiple of
    32; tests/tools/test_engines.py pins it to the installed diffusers for every aspect ratio), so
    sizes computed here are the sizes the edit pipelines resize their inputs to. The one difference:
    a side never rounds below `multiple` (diffusers would give 0 for an extreme ratio and fail).
    """
    width = math.sqrt(area * ratio)
    height = width / ratio
    width = max(multiple, round(width / multiple) * multiple)
    height = max(multiple, round(height / multiple) * multiple)
    return int(width), int(height)


def native_sizes(settings: EngineSettings) -> dict[str, tuple[int, int]]:
    """Width x height per aspect ratio for this engine: the profile's `sizes`, else family defaults."""
    multiple = FAMILY_MULTIPLE[settings.family]
    if settings.sizes:
        out = {}
        for ar, (w, h) in settings.sizes.items():
            out[ar] = (max(multiple, w // multiple * multiple), max(multiple, h // multiple * multiple))
        return out
    if settings.source == "random":
        area = TINY_AREA
    elif settings.family == "qwen-image":
        return dict(QWEN_IMAGE_SIZES)
    else:
        area = FAMILY_AREA[settings.family]
    from tools.schemas import ASPECT_RATIOS

    return {ar: snap_dimensions(area, ratio_of(ar), multiple) for ar in ASPECT_RATIOS}


class ImageEngine(ABC):
    """Text-to-image and instruction editing on one model family.

    Engines are built once per process and settings (`tools.engines.get_engine`); the heavy
    pipelines inside are loaded on first use.
    """

    settings: EngineSettings

    @property
    def family(self) -> str:
        return self.settings.family

    @property
    def multiple(self) -> int:
        return FAMILY_MULTIPLE[self.settings.family]

    def native_size(self, aspect_ratio: str = "1:1") -> tuple[int, int]:
        sizes = native_sizes(self.settings)
        if aspect_ratio not in sizes:
            from tools.errors import ToolArgumentError

            raise ToolArgumentError(f"aspect ratio {aspect_ratio} is not one of {', '.join(sizes)}")
        return sizes[aspect_ratio]

    def edit_size(self, width: int, height: int) -> tuple[int, int]:
        """The size an edit of a `width` x `height` image is drawn at: the VAE condition size.

        Drawing at exactly the size the pipeline resizes the input to avoids the known
        Qwen-Image-Edit zoom/shift (the output grid then lines up with the input latents).
        """
        return snap_dimensions(self.edit_vae_area(), width / height, self.edit_multiple)

    @property
    def edit_multiple(self) -> int:
        """The multiple edit canvases snap to: diffusers' `calculate_dimensions` rounding (32), which
        is also a multiple of what every family keeps (16 or 32)."""
        return math.lcm(EDIT_MULTIPLE, self.multiple)

    def edit_vae_area(self) -> int:
        if self.settings.edit_vae_area:
            return self.settings.edit_vae_area
        w, h = self.native_size("1:1")
        return 1024 * 1024 if self.settings.source != "random" else w * h

    def edit_condition_area(self) -> int:
        return self.settings.edit_condition_area or 384 * 384

    def adapter_names(self, role: str) -> list[str]:
        """Names of the loaded LoRAs with this role (`relight`, `angles`...); none by default."""
        return []

    @abstractmethod
    def generate(
        self,
        prompt: str,
        *,
        width: int,
        height: int,
        seed: int,
        steps: int | None = None,
        negative_prompt: str | None = None,
        count: int = 1,
        progress: Progress | None = None,
        few_step: bool = True,
    ) -> list[Image.Image]:
        """`count` images; image i is drawn from seed `seed + i`."""

    @abstractmethod
    def edit(
        self,
        instruction: str,
        images: Sequence[Image.Image],
        *,
        seed: int,
        steps: int | None = None,
        width: int | None = None,
        height: int | None = None,
        progress: Progress | None = None,
        negative_prompt: str | None = None,
        adapters: Sequence[str] = (),
        few_step: bool = True,
    ) -> Image.Image:
        """Edit `images[0]` by instruction; `images[1:]` are references (people, objects)."""
