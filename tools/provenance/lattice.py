"""Lattice watermark: a self-checking 48-bit id in the luminance, readable on any machine.

Where the dwtDctSvd scheme (`watermark.py`) lives in the chroma on a fixed pixel grid and is
matched against the sealing machine's registry, this one is built to survive what images go
through outside (rescaling to a quarter, upscaling, rotation, big crops, grayscale, screenshots):

  * a grid of square cells whose size follows the image (`min(h, w) / 128` px, at least 2), each
    cell +-1 times a keyed chip, smoothed, added to the luminance only (grayscale keeps it), scaled
    to a PSNR of 38.3 dB. Two patterns share the grid:
      - the **sync tile**, 4 x 4 cells repeated over the whole image (30% of the energy): many
        repeats make sharp peaks in the spectrum, from which the reader recovers the grid's period
        and angle (scale, rotation, crop, frame), and its phase gives the shift;
      - the **payload tile**, 16 x 16 cells (8 tiles across the short side, so a 50% crop keeps 16):
        the 48-bit id and a CRC-32 of (key, id), coded with a rate-1/3 convolutional code
        (K=7; 258 coded bits, 256 placed, one per cell, whitened with a key mask);
  * the chips, the cell order and the mask come from a key: by default the public key below, so
    any copy of Atelier can read any Atelier image; a private key (`provenance.watermark_key`)
    makes marks only its holder can read or forge;
  * informed embedding: the reader is run on the marked image at the known grid; coded bits read
    with a small margin get more of the fixed energy budget, strong ones less (a few rounds).

Reading: the luminance is resized to a 768-px short side and whitened (high-pass, divided by the
local energy); the whitened power spectrum is searched for the sync tile's harmonics over every
period (12-100 px) and angle (a weighted comb, then refined); for each of the best candidates the
image is folded onto one sync tile (the shift within it, per orientation) and one payload tile,
and for each of the 8 right-angle rotations / flips and the 16 placements of the sync tile within
the payload tile the 256 soft cells are Viterbi-decoded. An id is accepted only when its CRC-32
matches: each of the `hypotheses()` tried passes at random with probability 2^-32, so the
false-positive rate is bounded by `hypotheses() * 2^-32` (~1.2e-7) with no registry at all.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

PUBLIC_KEY = "atelier-watermark-public-v1"
ID_BITS, CRC_BITS = 48, 32
INFO = ID_BITS + CRC_BITS
K = 7  # constraint length of the convolutional code
GENERATORS = (0o133, 0o171, 0o165)  # rate 1/3 (the LTE generators)
TAIL = K - 1
CODED = (INFO + TAIL) * len(GENERATORS)  # 258; the last two are not placed (punctured)
CELLS = 16  # payload tile side in cells (256 cells)
SC = 4  # sync tile side in cells
TILES_ACROSS = 8  # payload tiles across the short side at embedding
CPX = 4  # canonical pixels per cell when reading
P = CELLS * CPX  # canonical payload tile side
PS = SC * CPX  # canonical sync tile side
SYNC_SHARE = 0.3  # of the pattern's energy
TARGET_PSNR = 38.3  # dB, after rounding and clipping
WORK = 768  # short side the reader works at
WORK_PIXELS = 4 * WORK * WORK  # at most this many working pixels (a very thin image gets a shorter short side)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
ORIENTATIONS = 8
MAX_CANDIDATES = 4  # lattice candidates decoded
SEARCHED = 12  # lattice candidates from the spectrum, ranked again by how well the sync tile folds
PERIODS = (12.0, 100.0)  # sync periods searched, in working px (an uncropped image: 24)
INFORMED_ROUNDS = 3
# the sync tile's harmonics the spectral search looks at (one of each +- pair)
HARMONICS = [(k, l) for k in range(-3, 4) for l in range(0, 4) if (l > 0 or k > 0)]


def _seed(key: str, what: str) -> int:
    return int.from_bytes(hashlib.sha256(f"atelier-lattice2:{what}:{key}".encode()).digest()[:8], "big")


@lru_cache(maxsize=8)
def _sync_cells(key: str) -> np.ndarray:
    """A balanced 4 x 4 +-1 pattern whose 127 other orientations and shifts match it least."""
    rng = np.random.default_rng(_seed(key, "sync"))
    best, best_score = None, math.inf
    for _ in range(400):
        v = np.array([1.0] * 8 + [-1.0] * 8)
        rng.shuffle(v)
        s = v.reshape(SC, SC)
        worst = 0.0
        for o in range(ORIENTATIONS):
            r = _orient(s, o)
            for dy in range(SC):
                for dx in range(SC):
                    if o or dy or dx:
                        worst = max(worst, abs(float(np.sum(np.roll(r, (dy, dx), (0, 1)) * s))))
        if worst < best_score:
            best, best_score = s.copy(), worst
    return best


@lru_cache(maxsize=8)
def _keyed(key: str):
    """Chips (+-1 per payload cell), the coded bit each cell carries, the whitening mask."""
    rng = np.random.default_rng(_seed(key, "payload"))
    chips = rng.choice([-1.0, 1.0], size=CELLS * CELLS)
    order = rng.permutation(CELLS * CELLS)
    mask = rng.integers(0, 2, size=CODED).astype(np.uint8)
    return chips, order, mask


def _crc(key: str, wm_id: str) -> int:
    return zlib.crc32(key.encode() + bytes.fromhex(wm_id)) & 0xFFFFFFFF


def _info_bits(wm_id: str, key: str) -> np.ndarray:
    value = (int(wm_id, 16) << CRC_BITS) | _crc(key, wm_id)
    return np.array([(value >> (INFO - 1 - i)) & 1 for i in range(INFO)], dtype=np.uint8)


@lru_cache(maxsize=1)
def _trellis():
    n = 1 << (K - 1)
    nxt = np.zeros((n, 2), np.int64)
    out = np.zeros((n, 2, len(GENERATORS)))
    for s in range(n):
        for b in range(2):
            reg = (b << (K - 1)) | s
            nxt[s, b] = reg >> 1
            for g, gen in enumerate(GENERATORS):
                out[s, b, g] = 1.0 - 2.0 * (bin(reg & gen).count("1") & 1)  # bit 0 -> +1
    prev = np.zeros((n, 2), np.int64)
    prev_bit = np.zeros((n, 2), np.int64)
    filled = np.zeros(n, np.int64)
    for s in range(n):
        for b in range(2):
            t = nxt[s, b]
            prev[t, filled[t]], prev_bit[t, filled[t]] = s, b
            filled[t] += 1
    return nxt, out, prev, prev_bit


def encode(info: np.ndarray) -> np.ndarray:
    """The convolutional codeword (0/1) of `info`, with the zero tail."""
    nxt, out, _, _ = _trellis()
    state, coded = 0, []
    for b in [int(x) for x in info] + [0] * TAIL:
        coded.extend((out[state, b] < 0).astype(np.uint8))
        state = nxt[state, b]
    return np.array(coded, np.uint8)


def viterbi(soft: np.ndarray) -> np.ndarray:
    """Soft-decision decoding of many words at once: `soft` (H, CODED), positive = bit 0;
    returns (H, INFO) bits (the tail ends in state 0)."""
    _, out, prev, prev_bit = _trellis()
    words, n, g = soft.shape[0], 1 << (K - 1), len(GENERATORS)
    steps = CODED // g
    y = soft.reshape(words, steps, g)
    metric = np.full((words, n), -1e18)
    metric[:, 0] = 0.0
    signs = out[prev, prev_bit]  # (next state, which predecessor, output)
    choices = np.zeros((steps, words, n), np.int8)
    for t in range(steps):
        cand = metric[:, prev] + np.einsum("wg,npg->wnp", y[:, t], signs)
        choice = np.argmax(cand, axis=2)
        metric = np.take_along_axis(cand, choice[..., None], 2)[..., 0]
        choices[t] = choice
    state = np.zeros(words, np.int64)
    bits = np.zeros((words, steps), np.uint8)
    rows = np.arange(words)
    for t in range(steps - 1, -1, -1):
        c = choices[t, rows, state]
        bits[:, t] = prev_bit[state, c]
        state = prev[state, c]
    return bits[:, :INFO]


def _check(info: np.ndarray, key: str) -> str | None:
    """The id when the 80 decoded bits carry a matching CRC, else None."""
    value = 0
    for b in info:
        value = (value << 1) | int(b)
    wm_id = f"{value >> CRC_BITS:012x}"
    return wm_id if (value & 0xFFFFFFFF) == _crc(key, wm_id) else None


def _coded_signs(wm_id: str, key: str) -> np.ndarray:
    """+-1 of each coded bit as the reader sees it (before the key mask)."""
    return encode(_info_bits(wm_id, key)).astype(np.float64) * -2 + 1


def _payload_cells(wm_id: str, key: str, gains: np.ndarray | None = None) -> np.ndarray:
    chips, order, mask = _keyed(key)
    signs = _coded_signs(wm_id, key) * (1 - 2.0 * mask)  # masked: what is written
    v = chips * signs[order]
    if gains is not None:
        v = v * gains[order]
    return v.reshape(CELLS, CELLS)


def cell_px(h: int, w: int) -> int:
    return max(2, round(min(h, w) / (CELLS * TILES_ACROSS)))


def _smooth(p: np.ndarray, c: int) -> np.ndarray:
    return cv2.GaussianBlur(p.astype(np.float32), (0, 0), c / 2.5, borderType=cv2.BORDER_REFLECT)


def _unit(p: np.ndarray, share: float) -> np.ndarray:
    return p * (math.sqrt(share) / max(float(np.sqrt(np.mean(p.astype(np.float64) ** 2))), 1e-9))


def pattern(h: int, w: int, wm_id: str, key: str = PUBLIC_KEY, gains: np.ndarray | None = None) -> np.ndarray:
    """The luminance change for an h x w image (float32, RMS 1 before `_apply` scales it)."""
    c = cell_px(h, w)
    iy, ix = np.arange(h) // c, np.arange(w) // c
    pay = _payload_cells(wm_id, key, gains)[(iy % CELLS)[:, None], (ix % CELLS)[None, :]]
    syn = _sync_cells(key)[(iy % SC)[:, None], (ix % SC)[None, :]]
    return _unit(_smooth(pay, c), 1 - SYNC_SHARE) + _unit(_smooth(syn, c), SYNC_SHARE)


def _apply(rgb: np.ndarray, d: np.ndarray) -> np.ndarray:
    """rgb + d on every channel (luminance only), scaled so the PSNR is TARGET_PSNR after rounding
    and clipping (at most 3x the nominal amplitude where clipping eats the change)."""
    want = 255.0 ** 2 / 10 ** (TARGET_PSNR / 10)
    nominal = math.sqrt(want)
    scale = nominal
    for _ in range(3):
        out = np.clip(np.rint(rgb + scale * d[..., None]), 0, 255)
        mse = float(np.mean((out - rgb) ** 2))
        scale = min(3 * nominal, scale * math.sqrt(want / max(mse, 1e-9)))
    return np.clip(np.rint(rgb + scale * d[..., None]), 0, 255).astype(np.uint8)


def embed(image: Image.Image, wm_id: str, *, key: str | None = None, rounds: int | None = None) -> Image.Image:
    """A copy of `image` carrying `wm_id` (12 hex digits) in its luminance."""
    key = key or PUBLIC_KEY
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w = rgb.shape[:2]
    gains = np.ones(CODED)
    placed = np.zeros(CODED, bool)
    placed[_keyed(key)[1]] = True
    want = _coded_signs(wm_id, key)
    rounds = INFORMED_ROUNDS if rounds is None else rounds
    out = rgb.astype(np.uint8)
    for round_ in range(rounds + 1):
        out = _apply(rgb, pattern(h, w, wm_id, key, gains))
        if round_ == rounds:
            break
        soft = _read_known(out, key)
        margin = soft * want / max(float(np.median(np.abs(soft[placed]))), 1e-9)
        # weak or wrong bits up, comfortable ones down, renormalised
        g = gains * np.clip(1.6 - 0.6 * margin, 0.7, 1.6)
        g[~placed] = 1.0
        gains = np.clip(g / np.mean(g[placed]), 0.3, 4.0)
    return Image.fromarray(out, "RGB")


def _read_known(rgb: np.ndarray, key: str) -> np.ndarray:
    """Soft coded bits at the grid as embedded (no attack)."""
    h, w = rgb.shape[:2]
    r = _whitened(rgb)
    period = cell_px(h, w) * CELLS * (min(r.shape) / min(h, w))
    return _soft(_fold(r, period, 0.0, P), key)


def _soft(aligned: np.ndarray, key: str) -> np.ndarray:
    """Soft coded bits (positive = 0) of a payload tile aligned to the cell grid."""
    chips, order, mask = _keyed(key)
    t = np.tile(_sync_template(key), (CELLS // SC, CELLS // SC))
    aligned = aligned - (np.sum(aligned * t) / np.sum(t * t)) * t  # the sync's share of every cell
    cells = aligned.reshape(CELLS, CPX, CELLS, CPX).mean(axis=(1, 3)).reshape(-1)
    soft = np.zeros(CODED)
    soft[order] = chips * cells
    return soft * (1 - 2.0 * mask)


# -- reading ------------------------------------------------------------------------------------

def _whitened(image) -> np.ndarray:
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    y = rgb[..., :3] @ LUMA
    h, w = y.shape
    s = min(WORK / min(h, w), math.sqrt(WORK_PIXELS / (h * w)))
    y = cv2.resize(y, (max(8, round(w * s)), max(8, round(h * s))),
                   interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    r = y - cv2.GaussianBlur(y, (0, 0), 6)
    r = cv2.GaussianBlur(r, (0, 0), 1.0)
    energy = np.sqrt(cv2.GaussianBlur(r * r, (0, 0), 6))
    return r / (energy + 2.0)


def _fold(r: np.ndarray, period: float, angle: float, size: int) -> np.ndarray:
    """r folded onto one tile of `size` canonical px whose side is `period` working px at `angle`."""
    h, w = r.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    c, s = math.cos(angle), math.sin(angle)
    u = (xx * c + yy * s) * (size / period)
    v = (-xx * s + yy * c) * (size / period)
    idx = (np.floor(v).astype(np.int64) % size) * size + (np.floor(u).astype(np.int64) % size)
    sums = np.bincount(idx.ravel(), weights=r.ravel(), minlength=size * size)
    counts = np.maximum(np.bincount(idx.ravel(), minlength=size * size), 1)
    return (sums / counts).reshape(size, size)


@lru_cache(maxsize=8)
def _sync_template(key: str) -> np.ndarray:
    t = np.kron(_sync_cells(key), np.ones((CPX, CPX)))
    big = cv2.GaussianBlur(np.tile(t, (3, 3)).astype(np.float32), (0, 0), CPX / 2.5)
    t = big[PS:2 * PS, PS:2 * PS].astype(np.float64)
    return t - t.mean()


def _orient(f: np.ndarray, o: int) -> np.ndarray:
    """One of the 8 right-angle rotations / flips."""
    return np.rot90(f[:, ::-1] if o >= 4 else f, o % 4)


@lru_cache(maxsize=8)
def _harmonic_weights(key: str) -> np.ndarray:
    """Power of the sync tile at each harmonic, averaged over the 8 orientations."""
    t = _sync_template(key)
    acc = np.zeros(len(HARMONICS))
    for o in range(ORIENTATIONS):
        power = np.abs(np.fft.fft2(_orient(t, o))) ** 2
        acc += [power[l % PS, k % PS] for k, l in HARMONICS]
    return acc / acc.sum()


def _spectrum(r: np.ndarray):
    """The whitened power spectrum (fftshifted, zero-padded 2x): 1 = the local background."""
    h, w = r.shape
    power = np.fft.fftshift(np.abs(np.fft.fft2(r - r.mean(), s=(2 * h, 2 * w))) ** 2).astype(np.float32)
    # in the log domain a peak hardly moves its own background, so how much a harmonic stands out
    # keeps its power ratio (normalising the power by its blur makes every isolated peak alike)
    log_power = np.log(power + 1e-6 * float(power.mean()) + 1e-12)
    return np.maximum(log_power - cv2.GaussianBlur(log_power, (0, 0), 4.0), 0.0), (2 * h, 2 * w)


def _comb(white, shape, periods, angles, weights) -> np.ndarray:
    """Weighted mean of the whitened power at the sync harmonics of each (period, angle)."""
    h2, w2 = shape
    k = np.array([a for a, _ in HARMONICS], float)
    l = np.array([b for _, b in HARMONICS], float)
    pp, aa = np.meshgrid(periods, angles, indexing="ij")
    c, s = np.cos(aa)[..., None], np.sin(aa)[..., None]
    fx = (k * c - l * s) / pp[..., None] * w2 + w2 / 2
    fy = (k * s + l * c) / pp[..., None] * h2 + h2 / 2
    x0, y0 = np.floor(fx).astype(int), np.floor(fy).astype(int)
    ax, ay = fx - x0, fy - y0
    inside = (x0 >= 0) & (x0 < w2 - 1) & (y0 >= 0) & (y0 < h2 - 1)
    x0, y0 = np.clip(x0, 0, w2 - 2), np.clip(y0, 0, h2 - 2)
    v = (white[y0, x0] * (1 - ax) * (1 - ay) + white[y0, x0 + 1] * ax * (1 - ay)
         + white[y0 + 1, x0] * (1 - ax) * ay + white[y0 + 1, x0 + 1] * ax * ay)
    return np.where(inside, v, 0.0) @ weights


def _candidates(r: np.ndarray, key: str, n: int = MAX_CANDIDATES) -> list[tuple[float, float, float]]:
    """(sync period in working px, angle, score) of the best distinct lattices, refined."""
    white, shape = _spectrum(r)
    weights = _harmonic_weights(key)
    periods = np.exp(np.arange(math.log(PERIODS[0]), math.log(PERIODS[1]), 0.006))
    angles = np.radians(np.arange(-45, 45, 0.4))
    score = _comb(white, shape, periods, angles, weights)
    picked: list[tuple[float, float, float]] = []
    for j in np.argsort(score, axis=None)[::-1][:400]:
        pi, ai = np.unravel_index(j, score.shape)
        p, a = float(periods[pi]), float(angles[ai])
        if all(abs(math.log(p / q)) > 0.03 or abs((a - b + math.pi / 4) % (math.pi / 2) - math.pi / 4) > 0.03
               for q, b, _ in picked):
            picked.append((p, a, float(score[pi, ai])))
        if len(picked) == n:
            break
    refined = []
    for p, a, _ in picked:
        pp = p * np.exp(np.linspace(-0.008, 0.008, 17))
        aa = a + np.radians(np.linspace(-0.5, 0.5, 11))
        fine = _comb(white, shape, pp, aa, weights)
        i, j = np.unravel_index(int(np.argmax(fine)), fine.shape)
        refined.append((float(pp[i]), float(aa[j]), float(fine[i, j])))
    return refined


def hypotheses() -> int:
    return MAX_CANDIDATES * ORIENTATIONS * (CELLS // SC) ** 2


def false_positive_bound() -> float:
    return hypotheses() / 2.0 ** CRC_BITS


def detect(image, *, key: str | None = None) -> dict:
    """{"detected", "id", "bits_agreeing" (coded bits, of 256), "bit_agreement", "hypothesis",
    "sync_z", "scheme"}: an id is reported only when its CRC-32 matches (false-positive bound
    `false_positive_bound()`)."""
    key = key or PUBLIC_KEY
    result = {"detected": False, "id": None, "bits_agreeing": 0, "bit_agreement": 0.0, "hypothesis": None,
              "sync_z": 0.0, "scheme": "lattice", "false_positive_bound": false_positive_bound()}
    r = _whitened(image)
    template = np.conj(np.fft.fft2(_sync_template(key)))
    placed = _keyed(key)[1]

    def sync_shifts(sync_fold):
        """(z, dy, dx) of the sync tile's best shift under each orientation."""
        out = []
        for o in range(ORIENTATIONS):
            c = np.real(np.fft.ifft2(np.fft.fft2(_orient(sync_fold, o)) * template))
            j = int(np.argmax(c))
            out.append((float((c.flat[j] - c.mean()) / (c.std() + 1e-12)), *divmod(j, PS)))
        return out

    # the spectrum's best few, and the ones whose sync tile folds best: on a flat image every
    # harmonic of the payload tile is a peak too, so some sub-lattices score as well as the lattice
    # in the spectrum, but only the lattice folds the sync tile coherently
    searched = [(period, angle, _fold(r, period, angle, PS)) for period, angle, _ in _candidates(r, key, SEARCHED)]
    shifts = [sync_shifts(fold) for _, _, fold in searched]
    by_fold = sorted(range(len(searched)), key=lambda i: -max(z for z, _, _ in shifts[i]))
    order = list(dict.fromkeys(i for pair in zip(range(len(searched)), by_fold) for i in pair))[:MAX_CANDIDATES]
    for i in order:
        period, angle, _ = searched[i]
        payload_fold = _fold(r, period * (CELLS // SC), angle, P)
        softs, names = [], []
        for o, (z, dy, dx) in enumerate(shifts[i]):
            result["sync_z"] = max(result["sync_z"], round(z, 2))
            g = _orient(payload_fold, o)
            for by in range(CELLS // SC):
                for bx in range(CELLS // SC):
                    shift = (dy + by * PS, dx + bx * PS)
                    softs.append(_soft(np.roll(g, (-shift[0], -shift[1]), (0, 1)), key))
                    names.append((o, shift, z))
        soft = np.array(softs)
        soft /= np.std(soft, axis=1, keepdims=True) + 1e-12
        for word, bits, (o, shift, z) in zip(soft, viterbi(soft), names):
            wm_id = _check(bits, key)
            if wm_id is not None:
                agree = int(np.sum((word[placed] > 0) == (_coded_signs(wm_id, key)[placed] > 0)))
                result.update(detected=True, id=wm_id, bits_agreeing=agree, bit_agreement=round(agree / placed.size, 4),
                              sync_z=round(z, 2),
                              hypothesis=f"period={period * CELLS / SC:.2f} angle={math.degrees(angle):.2f} "
                                         f"orientation={o} shift={shift}")
                return result
    return result


def psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)
