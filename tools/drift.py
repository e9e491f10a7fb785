"""Unintended change between a source image and an edit result.

- `global_shift`: the translation between the two (phase correlation, numpy FFT) in source pixels;
  Qwen-Image-Edit is known to zoom/shift slightly when the output grid does not match its inputs.
- `mean_change`: mean absolute pixel change (0-1), optionally only where a mask is set, e.g. the
  area an outpaint was not supposed to touch.
- `estimate` / `correct` / `measure`: drift control after a generative edit (translation, scale and
  small rotation by OpenCV ECC; re-alignment; paste-back of the untouched area), in a `DriftReport`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
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



# -- drift control: estimate, re-align, paste back ----------------------------------------------
#
# The estimate is an affine warp found by OpenCV's ECC (`cv2.findTransformECC`, MOTION_AFFINE),
# started from a phase-correlation translation, on grey copies at most ESTIMATE_SIDE px; a second
# pass ignores the area the edit changed. The warp is reported as its similarity part: the shift of
# the image centre, a uniform scale and a rotation. It is applied (inverse-mapped) at full size.

ESTIMATE_SIDE = 512  # grey copies for the estimate are at most this large
MIN_CORRECTION_PX = 0.5  # no re-alignment when no image corner moves more than this (full-size px)
MAX_SCALE_CHANGE = 0.2  # estimates past these are not drift but a different picture: not applied
MAX_ROTATION_DEG = 10.0
MAX_SHIFT_FRACTION = 0.15
MIN_ALIGNED_CC = 0.3  # the aligned result must correlate at least this well with the source
CHANGE_THRESHOLD = 0.06  # mean abs change (0-1, smoothed) above which a pixel counts as edited
GLOBAL_CHANGE_LEVEL = 0.03  # when half the image changed this much, the edit is global: no paste-back
MAX_PASTE_MASK = 0.85  # a change mask covering more than this is a global edit: no paste-back
MIN_CHANGE_AREA = 0.0002  # changed blobs smaller than this share of the image are noise
FACE_MARGIN = 0.15  # a face the edit touched is edited whole, its box grown by this much


@dataclass
class DriftReport:
    """What moved between a source and a result, and what was done about it.

    Shift is the displacement of the image centre (positive: the result moved right/down), in the
    pixels of the grid it was measured on; `scale` > 1 means the result is zoomed in;
    `rotation_deg` > 0 means it turned clockwise as seen."""

    shift_x_px: float = 0.0
    shift_y_px: float = 0.0
    scale: float = 1.0
    rotation_deg: float = 0.0
    mean_change: float = 0.0  # whole-image mean abs change (0-1) of the final result
    outside_change: float | None = None  # mean abs change outside the change mask (after correction)
    outside_change_before: float | None = None  # the same, before the correction
    changed_fraction: float | None = None  # share of the image the change mask covers
    pasted_back: float = 0.0  # share of the image taken back from the source
    realigned: bool = False
    estimated: bool = True  # False when the two images could not be registered (unrelated pictures)
    matrix: np.ndarray | None = field(default=None, repr=False)  # 2x3, source px -> result px

    @property
    def shift_px(self) -> float:
        return float(np.hypot(self.shift_x_px, self.shift_y_px))

    def figures(self) -> dict[str, float]:
        """Flat figures for `ToolResult.drift` (rounded; booleans as 0/1)."""
        out = {"global_shift_px": round(self.shift_px, 2), "shift_x_px": round(self.shift_x_px, 2) + 0.0,
               "shift_y_px": round(self.shift_y_px, 2) + 0.0, "scale": round(self.scale, 4),
               "rotation_deg": round(self.rotation_deg, 2) + 0.0, "mean_change": round(self.mean_change, 4),
               "pasted_back": round(self.pasted_back, 4), "realigned": float(self.realigned)}
        for key in ("outside_change", "outside_change_before", "changed_fraction"):
            value = getattr(self, key)
            if value is not None:
                out[key] = round(float(value), 4)
        return out

    def __getitem__(self, key: str) -> float:  # `measure(a, b)["shift_x_px"]`, as before
        return self.figures()[key]

    def rescaled(self, factor: float) -> "DriftReport":
        """The same report with shifts in another grid's pixels (e.g. the source's)."""
        return replace(self, shift_x_px=self.shift_x_px * factor, shift_y_px=self.shift_y_px * factor)

    def note(self) -> str | None:
        """A plain sentence for the planner and the user; None when nothing was corrected."""
        parts = []
        if self.realigned:
            moved = []
            if self.shift_px >= 0.5:
                moved.append(f"{self.shift_px:.0f} px shift")
            if abs(self.scale - 1) >= 0.005:
                moved.append(f"{abs(self.scale - 1) * 100:.0f}% {'zoom' if self.scale > 1 else 'zoom-out'}")
            if abs(self.rotation_deg) >= 0.1:
                moved.append(f"{abs(self.rotation_deg):.1f}° rotation")
            moved = moved or ["small move"]
            parts.append("re-aligned a " + (", a ".join(moved[:-1]) + " and a " if len(moved) > 1 else "") + moved[-1])
        if self.pasted_back > 0:
            parts.append(f"kept the untouched {self.pasted_back * 100:.0f}% from the original")
        return "; ".join(parts) or None


def _analysis_grey(image: Image.Image, side: int = ESTIMATE_SIDE) -> tuple[np.ndarray, float]:
    f = min(1.0, side / max(image.size))
    size = (max(8, round(image.width * f)), max(8, round(image.height * f)))
    return np.asarray(image.convert("L").resize(size, Image.BILINEAR), dtype=np.float32) / 255.0, size[0] / image.width


def _to_full(m: np.ndarray, f: float) -> np.ndarray:
    """A warp found on a grid scaled by `f` (pixel centres: x_a = f(x + 0.5) - 0.5), in full-size px."""
    if f == 1.0:
        return m.astype(np.float64)
    a, t = m[:, :2].astype(np.float64), m[:, 2].astype(np.float64)
    c = np.full(2, 0.5 * f - 0.5)
    return np.hstack([a, (((a - np.eye(2)) @ c + t) / f)[:, None]])


def _similarity(m: np.ndarray, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """(dx, dy, scale, rotation_deg) of a source->result warp: the centre's shift and the similarity part."""
    a = m[:, :2]
    centre = np.array([(size[0] - 1) / 2, (size[1] - 1) / 2])
    dx, dy = a @ centre + m[:, 2] - centre
    p, q = (a[0, 0] + a[1, 1]) / 2, (a[1, 0] - a[0, 1]) / 2
    return float(dx), float(dy), float(np.hypot(p, q)), float(np.degrees(np.arctan2(q, p)))


def _corner_motion(m: np.ndarray, size: tuple[int, int]) -> float:
    w, h = size
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], dtype=np.float64)
    return float(np.abs(corners @ m.T - corners[:, :2]).max())


def _ecc(a: np.ndarray, b: np.ndarray, init: np.ndarray, mask: np.ndarray | None) -> tuple[float, np.ndarray]:
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 60, 1e-5)
    return cv2.findTransformECC(a, b, init.astype(np.float32).copy(), cv2.MOTION_AFFINE, criteria,
                                mask, 5)


def estimate(source: Image.Image, result: Image.Image) -> tuple[np.ndarray | None, float]:
    """The affine warp (2x3, source px -> result px; both at the source's size) that best registers
    `result` onto `source`, and its correlation; (None, cc) when they do not register (unrelated)."""
    result = result if result.size == source.size else result.resize(source.size, Image.BILINEAR)
    a, f = _analysis_grey(source)
    b, _ = _analysis_grey(result)
    if min(a.shape) < 16 or a.std() < 1e-3 or b.std() < 1e-3:
        return None, 0.0
    # coarse: phase correlation then ECC on half-size copies; fine: ECC at the analysis size,
    # without the area the coarse fit shows changed (an edit pulls the fit towards itself)
    half = min(a.shape) >= 128
    ca, cb = (cv2.resize(x, (x.shape[1] // 2, x.shape[0] // 2), interpolation=cv2.INTER_AREA) for x in (a, b)) \
        if half else (a, b)
    window = cv2.createHanningWindow(ca.shape[::-1], cv2.CV_32F)
    (tx, ty), _ = cv2.phaseCorrelate(ca.copy(), cb.copy(), window)  # (OpenCV 5 may write into its inputs)
    init = np.array([[1, 0, tx], [0, 1, ty]], dtype=np.float32)
    try:
        cc, m = _ecc(ca, cb, init, None)
        if half:  # the coarse warp on the fine grid (pixel centres: x_f = 2 x_c + 0.5)
            m = _to_full(m, 0.5).astype(np.float32)
        aligned = cv2.warpAffine(b, m, a.shape[::-1], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                 borderMode=cv2.BORDER_REPLICATE)
        changed = cv2.GaussianBlur(np.abs(aligned - a), (0, 0), 2.0) > CHANGE_THRESHOLD
        share = float(changed.mean())
        keep = None
        if 0.005 < share < 0.6:
            keep = cv2.warpAffine((~changed).astype(np.uint8), m, a.shape[::-1], flags=cv2.INTER_NEAREST)
        cc, m = _ecc(a, b, m, keep)
    except cv2.error:
        return None, 0.0
    # ECC's own coefficient can flatter a poor fit: check the registration directly
    inverse = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    aligned = cv2.warpAffine(cv2.GaussianBlur(b, (0, 0), 1.0), m, a.shape[::-1], flags=inverse,
                             borderMode=cv2.BORDER_REPLICATE)
    valid = cv2.warpAffine(np.ones_like(b), m, a.shape[::-1], flags=inverse, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0) > 0.999
    ga, gb = cv2.GaussianBlur(a, (0, 0), 1.0)[valid], aligned[valid]
    cc = float(np.corrcoef(ga, gb)[0, 1]) if valid.mean() > 0.5 and ga.std() > 1e-4 and gb.std() > 1e-4 else 0.0
    full = _to_full(m, f)
    dx, dy, scale, rot = _similarity(full, source.size)
    if (cc < MIN_ALIGNED_CC or abs(scale - 1) > MAX_SCALE_CHANGE or abs(rot) > MAX_ROTATION_DEG
            or np.hypot(dx, dy) > MAX_SHIFT_FRACTION * max(source.size)):
        return None, float(cc)
    return full, float(cc)


def _warp_back(result: Image.Image, m: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """`result` inverse-mapped onto the source grid, and where it had data (float 0-1 arrays)."""
    arr = np.asarray(result.convert("RGB"), dtype=np.float32) / 255.0
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(arr, m, size, flags=flags, borderMode=cv2.BORDER_REPLICATE)
    valid = cv2.warpAffine(np.ones(arr.shape[:2], np.float32), m, size, flags=flags, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0) > 0.999
    return warped, valid


def _smooth_diff(a: np.ndarray, b: np.ndarray, sigma: float) -> np.ndarray:
    """Per-pixel change (0-1): mean over channels of the abs difference of smoothed images."""
    d = np.abs(cv2.GaussianBlur(a, (0, 0), sigma) - cv2.GaussianBlur(b, (0, 0), sigma))
    return d.mean(axis=-1) if d.ndim == 3 else d


def change_mask(
    source: np.ndarray, aligned: np.ndarray, faces: list[tuple[int, int, int, int]] | None = None,
) -> np.ndarray:
    """The region an edit changed (bool, source grid): the thresholded, smoothed difference after
    alignment, cleaned with morphology (speckles opened away, holes closed, small blobs dropped);
    every face box the change touches is included whole. Computed on a copy at most ESTIMATE_SIDE."""
    h, w = source.shape[:2]
    f = min(1.0, ESTIMATE_SIDE / max(w, h))
    size = (max(8, round(w * f)), max(8, round(h * f)))
    a = cv2.resize(source, size, interpolation=cv2.INTER_AREA)
    b = cv2.resize(aligned, size, interpolation=cv2.INTER_AREA)
    side = max(size)
    diff = _smooth_diff(a, b, max(1.0, side / 256))
    mask = (diff > CHANGE_THRESHOLD).astype(np.uint8)
    k = max(3, round(side / 128)) | 1
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    k2 = max(5, round(side / 32)) | 1
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k2, k2)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    min_area = MIN_CHANGE_AREA * size[0] * size[1]
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] < min_area:
            mask[labels == i] = 0
    for box in faces or []:
        l, t, r, btm = (v * f for v in box)
        gx, gy = (r - l) * FACE_MARGIN, (btm - t) * FACE_MARGIN
        l, t = max(0, int(l - gx)), max(0, int(t - gy))
        r, btm = min(size[0], int(np.ceil(r + gx))), min(size[1], int(np.ceil(btm + gy)))
        if r > l and btm > t and mask[t:btm, l:r].any():
            mask[t:btm, l:r] = 1
    if size != (w, h):
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
    return mask.astype(bool)


def _median_change(a: np.ndarray, b: np.ndarray) -> float:
    """The median pixel's smoothed change: above GLOBAL_CHANGE_LEVEL most of the picture changed."""
    h, w = a.shape[:2]
    f = min(1.0, ESTIMATE_SIDE / max(w, h))
    if f < 1:
        size = (max(8, round(w * f)), max(8, round(h * f)))
        a, b = (cv2.resize(x, size, interpolation=cv2.INTER_AREA) for x in (a, b))
    return float(np.median(_smooth_diff(a, b, 1.0)))


def _feather(mask: np.ndarray) -> np.ndarray:
    """Alpha (0-1) that is 1 on `mask` and falls to 0 over a band outside it (the seam); drawn on a
    copy at most ESTIMATE_SIDE and scaled up (it is smooth)."""
    h, w = mask.shape
    f = min(1.0, ESTIMATE_SIDE / max(w, h))
    size = (max(8, round(w * f)), max(8, round(h * f)))
    small = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_AREA) if f < 1 else mask.astype(np.uint8)
    band = max(2, round(max(size) / 64))
    grown = cv2.dilate(small, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1,) * 2))
    alpha = cv2.GaussianBlur(grown.astype(np.float32), (0, 0), band / 2)
    if f < 1:
        alpha = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_LINEAR)
    alpha[alpha < 1e-3] = 0.0
    return np.maximum(alpha, mask.astype(np.float32))


def _mean_abs(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    d = cv2.absdiff(a, b)
    if where is None:
        return float(d.mean())
    if not where.any():
        return 0.0
    means = cv2.mean(d, mask=where.astype(np.uint8))
    return float(np.mean(means[:d.shape[2]] if d.ndim == 3 else means[:1]))


def geometric_residual(source: np.ndarray, result: np.ndarray) -> float:
    """Mean abs change (0-1) once a smooth, per-channel change of light is taken out: what a relight
    moved or redrew rather than lit differently."""
    sigma = max(2.0, max(source.shape[:2]) / 64)
    gain = (cv2.GaussianBlur(result, (0, 0), sigma) + 1e-3) / (cv2.GaussianBlur(source, (0, 0), sigma) + 1e-3)
    return _mean_abs(np.clip(source * np.clip(gain, 0, 8), 0, 1), result)


def _as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def correct(
    source: Image.Image,
    result: Image.Image,
    mask: np.ndarray | None = None,
    *,
    paste_back: bool = True,
    faces: list[tuple[int, int, int, int]] | None = None,
) -> tuple[Image.Image, DriftReport]:
    """Re-align `result` onto `source` when it moved, then (with `paste_back`) composite everything
    outside the change mask back from `source` with a feathered seam.

    The result is first brought to the source's size. `mask` (bool, source size) is the region the
    edit was meant to touch, when known; else it is estimated from the aligned difference (plus the
    `faces` boxes it touches). Without `paste_back` (a relight: light changes everywhere) only the
    geometry is corrected and `outside_change` is the residual geometric change.
    """
    result = result.convert("RGB")
    result = result if result.size == source.size else result.resize(source.size, Image.LANCZOS)
    src = _as_array(source)
    raw = _as_array(result)
    m, _ = estimate(source, result)
    report = DriftReport(estimated=m is not None, matrix=m)
    out, valid = raw, np.ones(src.shape[:2], bool)
    if m is not None:
        report.shift_x_px, report.shift_y_px, report.scale, report.rotation_deg = _similarity(m, source.size)
        if _corner_motion(m, source.size) > MIN_CORRECTION_PX:
            out, valid = _warp_back(result, m, source.size)
            report.realigned = True
    if not paste_back:
        if not valid.all():  # the strip the warp uncovered: the source's own pixels, relit by the fit
            sigma = max(2.0, max(src.shape[:2]) / 64)
            gain = (cv2.GaussianBlur(out, (0, 0), sigma) + 1e-3) / (cv2.GaussianBlur(src, (0, 0), sigma) + 1e-3)
            out = np.where(valid[..., None], out, np.clip(src * gain, 0, 1))
        report.outside_change = geometric_residual(src, out)
        report.outside_change_before = geometric_residual(src, raw)
        report.mean_change = _mean_abs(src, out)
        return _to_image(out), report
    if mask is None:
        mask = change_mask(src, out, faces)
    mask = mask.astype(bool) & valid if mask.shape == src.shape[:2] else change_mask(src, out, faces)
    outside = ~mask
    report.changed_fraction = float(mask.mean())
    report.outside_change_before = _mean_abs(src, raw, outside)
    global_edit = report.changed_fraction > MAX_PASTE_MASK or _median_change(src, out) > GLOBAL_CHANGE_LEVEL
    # Nothing found changed: the edit may be too subtle to see here; keep the model's result rather
    # than paste the original over it.
    if not global_edit and outside.any() and mask.any():
        alpha = _feather(mask)
        alpha[~valid] = 0.0  # what the warp uncovered comes from the source
        out = out * alpha[..., None] + src * (1 - alpha[..., None])
        report.pasted_back = float((alpha < 1e-3).mean())
    report.outside_change = _mean_abs(src, out, outside)
    report.mean_change = _mean_abs(src, out)
    return _to_image(out), report


def _to_image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8))


def measure(
    source: Image.Image, result: Image.Image, keep_mask: np.ndarray | None = None, *, outside: bool = True,
) -> DriftReport:
    """Drift of `result` against `source`, corrected nothing: shift, scale, rotation, and the change
    outside the edit: where `keep_mask` is true when given, else (with `outside`) outside the change
    mask estimated after alignment (`outside_change`, on the result as it is). `mean_change`: the
    whole image."""
    result = result.convert("RGB")
    result = result if result.size == source.size else result.resize(source.size, Image.BILINEAR)
    src, raw = _as_array(source), _as_array(result)
    m, _ = estimate(source, result)
    report = DriftReport(estimated=m is not None, matrix=m, mean_change=_mean_abs(src, raw))
    aligned = raw
    if m is not None:
        report.shift_x_px, report.shift_y_px, report.scale, report.rotation_deg = _similarity(m, source.size)
        if _corner_motion(m, source.size) > MIN_CORRECTION_PX:
            aligned, _ = _warp_back(result, m, source.size)
    if keep_mask is not None:
        report.outside_change = _mean_abs(src, raw, keep_mask.astype(bool))
    elif outside:
        changed = change_mask(src, aligned)
        report.changed_fraction = float(changed.mean())
        report.outside_change = _mean_abs(src, raw, ~changed)
    return report
