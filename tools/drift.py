"""Unintended change between a source image and an edit result.

- `global_shift`: the translation between the two (phase correlation, numpy FFT) in source pixels;
  Qwen-Image-Edit is known to zoom/shift slightly when the output grid does not match its inputs.
- `mean_change`: mean absolute pixel change (0-1), optionally only where a mask is set, e.g. the
  area an outpaint was not supposed to touch.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

ANALYSIS_SIDE = 256  # images are compared at most this large (speed; shifts scale back up)


def _grey(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(image.convert("L").resize(size, Image.BILINEAR), dtype=np.float64)


def global_shift(source: Image.Image, result: Image.Image) -> tuple[float, float]:
    """(dx, dy) in source pixels that best aligns `result` onto `source` (positive: result moved right/down)."""
    scale = min(1.0, ANALYSIS_SIDE / max(source.size))
    size = (max(8, round(source.width * scale)), max(8, round(source.height * scale)))
    a, b = _grey(source, size), _grey(result, size)
    a -= a.mean()
    b -= b.mean()
    window = np.outer(np.hanning(size[1]), np.hanning(size[0]))
    fa, fb = np.fft.fft2(a * window), np.fft.fft2(b * window)
    cross = fb * np.conj(fa)
    cross /= np.abs(cross) + 1e-12
    corr = np.fft.ifft2(cross).real
    peak_y, peak_x = np.unravel_index(int(np.argmax(corr)), corr.shape)
    # sub-pixel refinement: parabola through the peak and its neighbours
    def refine(c_minus: float, c0: float, c_plus: float) -> float:
        denom = c_minus - 2 * c0 + c_plus
        return 0.0 if abs(denom) < 1e-12 else 0.5 * (c_minus - c_plus) / denom

    h, w = corr.shape
    dy = peak_y + refine(corr[(peak_y - 1) % h, peak_x], corr[peak_y, peak_x], corr[(peak_y + 1) % h, peak_x])
    dx = peak_x + refine(corr[peak_y, (peak_x - 1) % w], corr[peak_y, peak_x], corr[peak_y, (peak_x + 1) % w])
    if dy > h / 2:
        dy -= h
    if dx > w / 2:
        dx -= w
    return float(dx / scale), float(dy / scale)


def mean_change(source: Image.Image, result: Image.Image, mask: np.ndarray | None = None) -> float:
    """Mean absolute change (0-1) of `result` (resized to the source) against `source`, where `mask` is true."""
    a = np.asarray(source.convert("RGB"), dtype=np.float64) / 255.0
    b = np.asarray(result.convert("RGB").resize(source.size, Image.BILINEAR), dtype=np.float64) / 255.0
    diff = np.abs(a - b).mean(axis=-1)
    if mask is not None:
        if not mask.any():
            return 0.0
        diff = diff[mask]
    return float(diff.mean())


def measure(source: Image.Image, result: Image.Image, keep_mask: np.ndarray | None = None) -> dict[str, float]:
    """Drift figures for a ToolResult: global shift (px) and change outside the edited area."""
    dx, dy = global_shift(source, result)
    out = {"global_shift_px": round(float(np.hypot(dx, dy)), 2), "shift_x_px": round(dx, 2),
           "shift_y_px": round(dy, 2)}
    out["outside_change" if keep_mask is not None else "mean_change"] = round(mean_change(source, result, keep_mask), 4)
    return out
