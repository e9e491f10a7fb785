"""Lattice watermark: a self-checking 48-bit id in the luminance, readable on any machine.

Where the dwtDctSvd scheme (`watermark.py`) lives in the chroma on a fixed pixel grid and is
matched against the sealing machine's registry, this one is built to survive what images go
through outside (rescaling to a quarter, upscaling, rotation, big crops, grayscale, screenshots):

  * a tile of 16 x 16 cells, repeated over the whole image, whose cell size follows the image
    (`min(h, w) / 64` pixels: four tiles across the short side, so a 50% crop keeps two and a 25%
    thumbnail keeps 4-px cells); each cell is +-1 times a key chip, smoothed, added to the luminance
    only (grayscale keeps it) at a fixed RMS amplitude (PSNR ~38.5 dB);
  * 96 cells are a sync pattern, 160 carry 80 payload bits (two cells each per tile, every tile the
    same): the 48-bit id and a CRC-32 of (key, id), whitened with a key mask;
  * the chips, the cell roles and the mask come from a key: by default the public key below, so any
    copy of Atelier can read any Atelier image; a private key (`provenance.watermark_key`) makes
    marks only its holder can read or forge.

Reading: the luminance is resized to a 512-px short side and whitened; the period and angle of the
tile lattice come from the peaks of its autocorrelation (scale, rotation); the image is folded onto
one tile along that lattice; a circular cross-correlation with the sync pattern gives the shift
(crops, frames) for each of the 8 right-angle rotations / flips; the payload is read there. A
decoded id is accepted only when its CRC-32 matches: each hypothesis tried (lattice candidates x
orientations x Chase flips of the weakest bits) passes at random with probability 2^-32, so the
false-positive rate is bounded by `hypotheses() * 2^-32` (< 1e-6) with no registry at all.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import zlib
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

PUBLIC_KEY = "atelier-watermark-public-v1"
ID_BITS, CRC_BITS = 48, 32
BITS = ID_BITS + CRC_BITS
CELLS = 16  # tile side in cells
SYNC_CELLS = 96
TILES_ACROSS = 4  # tiles across the short side at embedding
CPX = 4  # canonical pixels per cell when reading
P = CELLS * CPX  # canonical tile side
AMPLITUDE = 3.0  # RMS change of the luminance (8-bit levels): PSNR ~38.5 dB
WORK = 512
WHITEN_BINS = 3.0  # short side the reader works at
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
CHASE_WEAK, CHASE_FLIPS = 8, 2  # flip up to 2 of the 8 least reliable bits
LATTICE_CANDIDATES = 3  # plain and whitened autocorrelation bases + the lattice as embedded
ORIENTATIONS = 8


@lru_cache(maxsize=8)
def _keyed(key: str):
    """Chips (+-1 per cell), sync mask, payload bit of each cell, whitening mask (80 bits)."""
    seed = int.from_bytes(hashlib.sha256(("atelier-lattice:" + key).encode()).digest()[:8], "big")
    rng = np.random.default_rng(seed)
    chips = rng.choice([-1.0, 1.0], size=CELLS * CELLS)
    order = rng.permutation(CELLS * CELLS)
    sync = np.zeros(CELLS * CELLS, dtype=bool)
    sync[order[:SYNC_CELLS]] = True
    bit_of = np.full(CELLS * CELLS, -1, dtype=np.int64)
    payload_cells = order[SYNC_CELLS:]
    bit_of[payload_cells] = np.arange(payload_cells.size) % BITS
    mask = rng.integers(0, 2, size=BITS).astype(np.uint8)
    return chips, sync, bit_of, mask


def _crc(key: str, wm_id: str) -> int:
    return zlib.crc32(key.encode() + bytes.fromhex(wm_id)) & 0xFFFFFFFF


def payload_bits(wm_id: str, key: str = PUBLIC_KEY) -> np.ndarray:
    value = (int(wm_id, 16) << CRC_BITS) | _crc(key, wm_id)
    bits = np.array([(value >> (BITS - 1 - i)) & 1 for i in range(BITS)], dtype=np.uint8)
    return bits ^ _keyed(key)[3]


def _check(bits: np.ndarray, key: str) -> str | None:
    """The id when the (unwhitened) 80 bits carry a matching CRC, else None."""
    value = 0
    for b in bits ^ _keyed(key)[3]:
        value = (value << 1) | int(b)
    wm_id = f"{value >> CRC_BITS:012x}"
    return wm_id if (value & 0xFFFFFFFF) == _crc(key, wm_id) else None


def _cell_values(wm_id: str | None, key: str, gains: np.ndarray | None = None) -> np.ndarray:
    """+-1 of every cell (16 x 16); payload cells 0 when wm_id is None (the sync template).
    `gains` (BITS + 1: one per payload bit, then the sync) scales the cells of each."""
    chips, sync, bit_of, _ = _keyed(key)
    v = np.where(sync, chips, 0.0)
    if wm_id is not None:
        bits = payload_bits(wm_id, key).astype(np.float64) * 2 - 1
        v = np.where(sync, chips, chips * bits[np.maximum(bit_of, 0)])
    if gains is not None:
        v = v * np.where(sync, gains[BITS], gains[np.maximum(bit_of, 0)])
    return v.reshape(CELLS, CELLS)


def cell_px(h: int, w: int) -> int:
    return max(2, round(min(h, w) / (CELLS * TILES_ACROSS)))


def pattern(h: int, w: int, wm_id: str, key: str = PUBLIC_KEY, gains: np.ndarray | None = None) -> np.ndarray:
    """The luminance change for an h x w image (float32, RMS AMPLITUDE)."""
    c = cell_px(h, w)
    cells = _cell_values(wm_id, key, gains)
    iy = (np.arange(h) // c) % CELLS
    ix = (np.arange(w) // c) % CELLS
    p = cells[iy[:, None], ix[None, :]].astype(np.float32)
    p = cv2.GaussianBlur(p, (0, 0), c / 2.5, borderType=cv2.BORDER_REFLECT)
    p *= AMPLITUDE / max(float(np.sqrt(np.mean(p.astype(np.float64) ** 2))), 1e-6)
    return p


INFORMED_ROUNDS = 4
SYNC_GAIN = 1.3  # amplitude of the sync cells relative to the mean payload cell


def embed(image: Image.Image, wm_id: str, *, key: str | None = None, rounds: int | None = None) -> Image.Image:
    """A copy of `image` carrying `wm_id` (12 hex digits) in its luminance.

    Informed embedding: the image itself interferes with the reader (textures project onto the
    cells). The reader is run on the marked image at the known lattice; bits (and the sync) read
    with a small margin get more of the fixed energy budget, strong ones less; a few rounds.
    """
    key = key or PUBLIC_KEY
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w = rgb.shape[:2]
    gains = np.ones(BITS + 1)
    gains[BITS] = SYNC_GAIN
    want = payload_bits(wm_id, key).astype(np.float64) * 2 - 1
    out = None
    for round_ in range((INFORMED_ROUNDS if rounds is None else rounds) + 1):
        d = pattern(h, w, wm_id, key, gains)
        out = np.clip(np.rint(rgb + d[..., None]), 0, 255).astype(np.uint8)  # same change on R, G, B: luminance only
        if round_ == (INFORMED_ROUNDS if rounds is None else rounds):
            break
        soft, sync_score = _read_known(out, key)
        margin = soft * want / max(float(np.median(np.abs(soft))), 1e-9)
        # weak or wrong bits up, comfortable ones down, renormalised; the sync keeps its share
        g = gains[:BITS] * np.clip(1.6 - 0.6 * margin, 0.7, 1.6)
        gains[:BITS] = np.clip(g / np.mean(g), 0.3, 4.0)
    return Image.fromarray(out, "RGB")


def _read_known(rgb: np.ndarray, key: str) -> tuple[np.ndarray, float]:
    """Soft payload bits and sync score at the lattice as embedded (no attack)."""
    h, w = rgb.shape[:2]
    r = _whitened(rgb)
    period = cell_px(h, w) * CELLS * (min(r.shape) / min(h, w))
    f = _fold(r, period, 0.0)
    soft = _soft(f, key)
    t = _sync_template(key)
    return soft, float(np.sum(f * t) / max(np.sqrt(np.sum(t * t)), 1e-9))


def _soft(aligned: np.ndarray, key: str) -> np.ndarray:
    chips, _, bit_of, _ = _keyed(key)
    payload = bit_of >= 0
    cells = aligned.reshape(CELLS, CPX, CELLS, CPX).mean(axis=(1, 3)).reshape(-1)
    return np.bincount(bit_of[payload], weights=(chips * cells)[payload], minlength=BITS)


# -- reading ------------------------------------------------------------------------------------

def _whitened(image) -> np.ndarray:
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    y = rgb[..., :3] @ LUMA
    h, w = y.shape
    s = WORK / min(h, w)
    y = cv2.resize(y, (max(8, round(w * s)), max(8, round(h * s))),
                   interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    r = y - cv2.GaussianBlur(y, (0, 0), 6)
    r = cv2.GaussianBlur(r, (0, 0), 1.0)
    energy = np.sqrt(cv2.GaussianBlur(r * r, (0, 0), 12))
    return r / (energy + 1.0)


def _autocorrelation(r: np.ndarray, whiten: bool = False) -> np.ndarray:
    h, w = r.shape
    f = np.fft.fft2(r - r.mean(), s=(2 * h, 2 * w))
    power = np.abs(f) ** 2
    if whiten:
        # spectral whitening: the tiled pattern is a lattice of sharp lines over the image's smooth
        # spectrum; dividing by the local mean power keeps the lines and flattens the rest
        local = cv2.GaussianBlur(np.fft.fftshift(power).astype(np.float32), (0, 0), WHITEN_BINS)
        power = np.fft.ifftshift(np.minimum(np.fft.fftshift(power) / (local.astype(np.float64) + 1e-9), 50.0) - 1.0)
    a = np.real(np.fft.ifft2(power))
    ones = np.fft.rfft2(np.ones_like(r), s=(2 * h, 2 * w))
    overlap = np.fft.irfft2(np.abs(ones) ** 2, s=(2 * h, 2 * w))
    a = a / np.maximum(overlap, 0.25 * h * w)
    return np.fft.fftshift(a)  # lag (0, 0) at (h, w)


def _subpixel(a: np.ndarray, y: int, x: int) -> tuple[float, float]:
    def off(m, c, p):
        den = m - 2 * c + p
        return 0.0 if den >= 0 else 0.5 * (m - p) / den
    if 0 < y < a.shape[0] - 1 and 0 < x < a.shape[1] - 1:
        return y + off(a[y - 1, x], a[y, x], a[y + 1, x]), x + off(a[y, x - 1], a[y, x], a[y, x + 1])
    return float(y), float(x)


def _bases(r: np.ndarray, whiten: bool = False, limit: int = LATTICE_CANDIDATES - 1) -> list[tuple[float, float]]:
    """(period in working px, angle in radians) candidates of the tile lattice."""
    h, w = r.shape
    a = _autocorrelation(r, whiten).astype(np.float32)
    cy, cx = h, w
    yy, xx = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    rad = np.hypot(yy - cy, xx - cx)
    lo, hi = 40, 0.62 * min(h, w)
    valid = (rad >= lo) & (rad <= hi) & ((yy - cy) >= 0)
    local_max = a == cv2.dilate(a, np.ones((7, 7), np.uint8))
    ys, xs = np.nonzero(valid & local_max)
    if ys.size == 0:
        return []
    vals = a[ys, xs]
    top = np.argsort(vals)[::-1][:12]

    def at(dy, dx):
        y, x = int(round(cy + dy)), int(round(cx + dx))
        if 0 <= y < a.shape[0] and 0 <= x < a.shape[1]:
            return float(a[max(0, y - 1):y + 2, max(0, x - 1):x + 2].max())
        return -np.inf

    scored = []
    for i in top:
        dy, dx = _subpixel(a, ys[i], xs[i])
        dy, dx = dy - cy, dx - cx
        score = float(vals[i]) + at(dx, -dy)  # the lattice is square: the peak at v rotated by 90 deg too
        scored.append((score, math.hypot(dy, dx), dy, dx))
    best = max(s[0] for s in scored)
    good = sorted((s for s in scored if s[0] >= 0.6 * best), key=lambda s: s[1])
    out = []
    for _, length, dy, dx in good:
        # refine with the peak at 2v when it is in range (half the error)
        y2, x2 = int(round(cy + 2 * dy)), int(round(cx + 2 * dx))
        if 2 * length <= hi and 3 <= y2 < a.shape[0] - 3 and 3 <= x2 < a.shape[1] - 3:
            win = a[y2 - 2:y2 + 3, x2 - 2:x2 + 3]
            j, i = np.unravel_index(int(np.argmax(win)), win.shape)
            py, px = _subpixel(a, y2 - 2 + j, x2 - 2 + i)
            dy, dx = (py - cy) / 2, (px - cx) / 2
            length = math.hypot(dy, dx)
        angle = math.atan2(dy, dx) % (math.pi / 2)
        if all(abs(length - L) > 2 or abs(angle - t) > 0.02 for L, t in out):
            out.append((length, angle))
        if len(out) == limit:
            break
    return out


def _fold(r: np.ndarray, period: float, angle: float) -> np.ndarray:
    h, w = r.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    c, s = math.cos(angle), math.sin(angle)
    u = (xx * c + yy * s) * (P / period)
    v = (-xx * s + yy * c) * (P / period)
    idx = (np.floor(v).astype(np.int64) % P) * P + (np.floor(u).astype(np.int64) % P)
    sums = np.bincount(idx.ravel(), weights=r.ravel(), minlength=P * P)
    counts = np.maximum(np.bincount(idx.ravel(), minlength=P * P), 1)
    return (sums / counts).reshape(P, P)


@lru_cache(maxsize=8)
def _sync_template(key: str) -> np.ndarray:
    cells = _cell_values(None, key)
    t = np.kron(cells, np.ones((CPX, CPX)))
    big = np.tile(t, (3, 3)).astype(np.float32)
    big = cv2.GaussianBlur(big, (0, 0), CPX / 2.5)
    t = big[P:2 * P, P:2 * P].astype(np.float64)
    return t - t.mean()


def _orientations(f: np.ndarray):
    for flip in (False, True):
        g = f[:, ::-1] if flip else f
        for k in range(4):
            yield f"flip={int(flip)} rot90={k}", np.rot90(g, k)


def hypotheses() -> int:
    chase = sum(math.comb(CHASE_WEAK, k) for k in range(CHASE_FLIPS + 1))
    return LATTICE_CANDIDATES * ORIENTATIONS * chase


def false_positive_bound() -> float:
    return hypotheses() / 2.0 ** CRC_BITS


def detect(image, *, key: str | None = None) -> dict:
    """{"detected", "id", "bits_agreeing" (of 48), "hypothesis", "sync_z", "scheme"}: an id is
    reported only when its CRC-32 matches (false-positive bound `false_positive_bound()`)."""
    key = key or PUBLIC_KEY
    result = {"detected": False, "id": None, "bits_agreeing": 0, "bit_agreement": 0.0, "hypothesis": None,
              "sync_z": 0.0, "scheme": "lattice", "false_positive_bound": false_positive_bound()}
    r = _whitened(image)
    # the best base of the plain autocorrelation (synthetic images), of the spectrally whitened one
    # (photos, whose own texture dominates the plain one), and the lattice as embedded
    bases = _bases(r, limit=1) + _bases(r, whiten=True, limit=1)
    size = image.size if isinstance(image, Image.Image) else image.shape[1::-1]
    bases.append((cell_px(size[1], size[0]) * CELLS * min(r.shape) / min(size), 0.0))  # as embedded, not rescaled
    template_f = np.conj(np.fft.fft2(_sync_template(key)))
    for period, angle in bases:
        folded = _fold(r, period, angle)
        views = []
        for name, f in _orientations(folded):
            c = np.real(np.fft.ifft2(np.fft.fft2(f) * template_f))
            j = int(np.argmax(c))
            z = float((c.flat[j] - c.mean()) / (c.std() + 1e-12))
            views.append((z, name, f, divmod(j, P)))
        views.sort(key=lambda t: -t[0])
        for z, name, f, (dy, dx) in views:
            soft = _soft(np.roll(f, (-dy, -dx), axis=(0, 1)), key)
            hard = (soft > 0).astype(np.uint8)
            weak = np.argsort(np.abs(soft))[:CHASE_WEAK]
            for n_flip in range(CHASE_FLIPS + 1):
                for flips in itertools.combinations(weak, n_flip):
                    bits = hard.copy()
                    bits[list(flips)] ^= 1
                    wm_id = _check(bits, key)
                    if wm_id is not None:
                        agree = ID_BITS - int(np.sum(np.asarray(flips) < ID_BITS)) if flips else ID_BITS
                        result.update(detected=True, id=wm_id, bits_agreeing=agree, bit_agreement=round(agree / ID_BITS, 4),
                                      hypothesis=f"period={period:.1f} angle={math.degrees(angle):.2f} {name} "
                                                 f"shift={(dy, dx)} flips={n_flip}", sync_z=round(z, 2))
                        return result
            if z > result["sync_z"]:
                result["sync_z"] = round(z, 2)
    return result


def psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)
