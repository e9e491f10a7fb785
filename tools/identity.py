"""Face analysis for the identity gate: detect faces, embed them, match source and result faces.

Backends:
- `dlib` (default, offline): dlib's detector (HOG, CNN fallback), 68-point shape predictor and the
  ResNet face-recognition model whose files ship in `face-recognition-models`. 128-d embeddings,
  L2 distance < 0.6 means the same person (dlib's published operating point).
- `insightface` (the GPU profiles; extra `insightface`): buffalo_l / antelopev2 ONNX packs from
  `<insightface_root>/models/<insightface_model>/` (the package ships no weights and nothing here
  downloads any), a SCRFD detector and an ArcFace recognition model through `FaceAnalysis`.
  512-d embeddings, normalised; distance is their cosine distance (1 - cosine similarity), same
  person < 0.6 (similarity > 0.4, insightface's own default: `tools.settings.DEFAULT_THRESHOLDS`).
  When the pack is missing, one line says where to put it; `identity.fallback: dlib` checks faces
  with dlib instead and the results say so (`FaceAnalyzer.fallback_note`).
- `none`: no faces, no checks.

`FaceAnalyzer.compare(source, result)` matches faces one to one (Hungarian assignment over
embedding distance plus position) and returns one `FaceCheck` per source face. Positions are
compared through the layout the faces agree on (`FaceAnalyzer.layout`: the same place, mirrored,
or re-framed: a similarity transform fitted by RANSAC), and a source face with no partner is
searched for where that layout puts it (an upsampled detection on that crop) before it is called
lost. The CNN detector runs only on bounded pixels within a time budget.

People are numbered 1, 2, ... left to right wherever a person reads it (notes, checks, consent
questions), with where they are (`describe_faces`: "the person on the left"); `FaceCheck.face`
stays the 0-based index into the source's faces (the same order).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tools.errors import ModelUnavailableError
from tools.schemas import FaceCheck
from tools.settings import IdentitySettings

# Weight of the position term (centre distance as a fraction of the image diagonal) in the matching
# cost: a face that moved half the image away costs as much as a 0.5 embedding distance.
POSITION_WEIGHT = 1.0
# A pairing whose centres are further apart than this (fraction of the diagonal) is no match.
MAX_POSITION_SHIFT = 0.35
# The CNN detector runs (when HOG finds nothing) on at most this many pixels (after dlib's
# upsampling; a larger image is scaled down first) and within a time budget per image: it costs
# seconds per megapixel on a CPU. Its speed is measured as it runs (`_DlibBackend.cnn_s_per_mpx`),
# in CPU seconds of the calling thread, so that a busy machine does not shrink the budget.
CNN_MAX_PIXELS = 1_000_000
CNN_BUDGET_S = 1.2
CNN_S_PER_MPX = 12.0  # first guess (one CPU core: 0.25 MP took 2.9 s), replaced by the measured speed
# A source face with no partner is searched for where the layout puts it: an upsampled detection
# on a crop this many face sizes wide, with at most this much CNN time for all the crops of a check.
REDETECT_CROP_FACES = 2.6
REDETECT_FACE_PX = 100
REDETECT_BUDGET_S = 1.0
# The layout (how the result's faces sit relative to the source's): a candidate transform counts
# a pairing when it puts the source face within this fraction of the face's width of its partner.
LAYOUT_TOLERANCE = 0.5
# A layout other than the same place must explain at least this many faces (two points always fit
# a similarity exactly; two people mirrored look like two people who swapped places).
LAYOUT_MIN_SUPPORT = 3
# Where insightface 2.1 itself fetches a pack (`insightface.utils.storage`); said, never fetched here.
INSIGHTFACE_ZOO_URL = "https://github.com/deepinsight/insightface/releases/download/model-zoo/{name}.zip"

logger = logging.getLogger(__name__)


@dataclass
class Face:
    box: tuple[int, int, int, int]  # (left, top, right, bottom) in pixels
    embedding: np.ndarray
    score: float = 1.0
    landmarks: np.ndarray | None = field(default=None, repr=False)

    @property
    def center(self) -> tuple[float, float]:
        left, top, right, bottom = self.box
        return (left + right) / 2.0, (top + bottom) / 2.0


@dataclass(frozen=True)
class Layout:
    """An affine map from source pixels to result pixels: `p -> p @ A.T + t`."""

    A: np.ndarray
    t: np.ndarray

    @classmethod
    def plain(cls, source_size: tuple[int, int], result_size: tuple[int, int], mirror: bool = False) -> "Layout":
        """The same relative place (a resize), or its horizontal mirror."""
        sx, sy = result_size[0] / source_size[0], result_size[1] / source_size[1]
        if mirror:
            return cls(np.array([[-sx, 0.0], [0.0, sy]]), np.array([float(result_size[0]), 0.0]))
        return cls(np.array([[sx, 0.0], [0.0, sy]]), np.zeros(2))

    def then(self, a: complex, b: complex) -> "Layout":
        """This map followed by the similarity z -> a z + b (points as complex numbers)."""
        m = np.array([[a.real, -a.imag], [a.imag, a.real]])
        return Layout(m @ self.A, m @ self.t + np.array([b.real, b.imag]))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, dtype=np.float64) @ self.A.T + self.t


# A fitted layout is a re-framing: a zoom within this factor, a rotation within this angle.
_FIT_SCALE = (0.25, 4.0)
_FIT_MAX_ANGLE = np.deg2rad(25.0)


def _fit_similarity(src: np.ndarray, dst: np.ndarray, tol: np.ndarray) -> tuple[complex, complex] | None:
    """The similarity z -> a z + b that puts the most `src` points within `tol` of `dst` (RANSAC
    over every pair of points: there are few faces), refined by least squares on its inliers."""
    z = src[:, 0] + 1j * src[:, 1]
    w = dst[:, 0] + 1j * dst[:, 1]

    def plausible(a: complex) -> bool:
        return _FIT_SCALE[0] <= abs(a) <= _FIT_SCALE[1] and abs(np.angle(a)) <= _FIT_MAX_ANGLE

    def inliers(a: complex, b: complex) -> np.ndarray:
        return np.abs(a * z + b - w) <= tol

    best, best_in = None, None
    for p in range(len(z)):
        for q in range(p + 1, len(z)):
            if abs(z[q] - z[p]) < 1e-6:
                continue
            a = (w[q] - w[p]) / (z[q] - z[p])
            if not plausible(a):
                continue
            b = w[p] - a * z[p]
            mask = inliers(a, b)
            if best_in is None or mask.sum() > best_in.sum():
                best, best_in = (a, b), mask
    if best is None:
        return None
    zm, wm = z[best_in].mean(), w[best_in].mean()
    zc, wc = z[best_in] - zm, w[best_in] - wm
    denom = float(np.sum(np.abs(zc) ** 2))
    if denom > 1e-9:
        a = complex(np.sum(np.conj(zc) * wc) / denom)
        b = complex(wm - a * zm)
        if plausible(a) and inliers(a, b).sum() >= best_in.sum():
            best = (a, b)
    return complex(best[0]), complex(best[1])


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _model_dir() -> Path:
    """The model folder of `face-recognition-models`, found without importing it (its __init__
    needs `pkg_resources`, which recent setuptools no longer ships)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            "the dlib face models are not installed (pip install 'qwen-atelier[faces]')"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models"


class _DlibBackend:
    distance_name = "l2"

    def __init__(self):
        try:
            import dlib
        except ImportError:
            raise ModelUnavailableError("dlib is not installed (pip install 'qwen-atelier[faces]')") from None
        models = _model_dir()
        self.dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self._cnn_path = models / "mmod_human_face_detector.dat"
        self._cnn = None
        self.shape = dlib.shape_predictor(str(models / "shape_predictor_68_face_landmarks.dat"))
        self.encoder = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))

    cnn_s_per_mpx = CNN_S_PER_MPX

    def _cnn_detect(self, arr: np.ndarray, upsample: int, budget_s: float) -> list:
        """The CNN detector on at most CNN_MAX_PIXELS (and what `budget_s` allows at the measured
        speed): fewer upsamplings first, then the image scaled down; rects in `arr`'s pixels."""
        import time

        h, w = arr.shape[:2]
        allowed = min(CNN_MAX_PIXELS, budget_s / self.cnn_s_per_mpx * 1e6)
        while upsample > 0 and h * w * 4 ** upsample > allowed:
            upsample -= 1
        scale = min(1.0, float(np.sqrt(allowed / (h * w))))
        if scale * min(h, w) < 40:  # too small to hold a face the CNN can find
            return []
        small = arr
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = np.ascontiguousarray(np.asarray(Image.fromarray(arr).resize(size, Image.BILINEAR)))
        if self._cnn is None:
            self._cnn = self.dlib.cnn_face_detection_model_v1(str(self._cnn_path))
        start = time.thread_time()
        found = [d.rect for d in self._cnn(small, upsample)]
        mpx = small.shape[0] * small.shape[1] * 4 ** upsample / 1e6
        if mpx > 0.05:  # the speed this machine runs at, for the next call's budget
            self.cnn_s_per_mpx = max(0.05, (time.thread_time() - start) / mpx)
        if scale == 1.0:
            return found
        sx, sy = w / small.shape[1], h / small.shape[0]
        return [self.dlib.rectangle(round(r.left() * sx), round(r.top() * sy), round(r.right() * sx),
                                    round(r.bottom() * sy)) for r in found]

    def _detect(self, arr: np.ndarray, upsample: int, cnn_budget_s: float = CNN_BUDGET_S) -> list:
        rects = list(self.detector(arr, upsample))
        if not rects and cnn_budget_s > 0:
            # The CNN detector finds turned and small faces HOG misses (slower, so only as a
            # fallback, on bounded pixels within a time budget).
            rects = self._cnn_detect(arr, upsample, cnn_budget_s)
        return rects

    def faces(self, image: Image.Image, upsample: int = 1, cnn_budget_s: float = CNN_BUDGET_S) -> list[Face]:
        arr = np.ascontiguousarray(np.asarray(image.convert("RGB")))
        out = []
        for rect in self._detect(arr, upsample, cnn_budget_s):
            shape = self.shape(arr, rect)
            emb = np.asarray(self.encoder.compute_face_descriptor(arr, shape, 0), dtype=np.float32)
            h, w = arr.shape[:2]
            box = (max(0, rect.left()), max(0, rect.top()), min(w, rect.right()), min(h, rect.bottom()))
            pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
            out.append(Face(box=box, embedding=emb, landmarks=pts))
        return out

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(a - b))


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


def _insightface_pack(model_dir: Path) -> Path | None:
    """The folder holding the pack's models: `model_dir`, or the folder of the same name inside it
    (antelopev2.zip unzips into one), when it has .onnx files or an insightface manifest."""
    for folder in (model_dir, model_dir / model_dir.name):
        if folder.is_dir() and (any(folder.glob("*.onnx")) or (folder / "manifest.json").is_file()):
            return folder
    return None


class _InsightFaceBackend:
    distance_name = "cosine"

    def __init__(self, settings: IdentitySettings):
        name = settings.insightface_model
        root = Path(os.path.expanduser(settings.insightface_root or "~/.insightface"))
        model_dir = root / "models" / name
        if importlib.util.find_spec("insightface") is None:
            raise ModelUnavailableError("insightface is not installed (pip install 'qwen-atelier[insightface]')")
        pack = _insightface_pack(model_dir)
        if pack is None:
            raise ModelUnavailableError(
                f"insightface model {name} not found: put its files in {model_dir} (download {name}.zip "
                f"on a machine with hub access, e.g. {INSIGHTFACE_ZOO_URL.format(name=name)}, and unzip it there)"
            )
        try:
            from insightface.app import FaceAnalysis
        except ImportError as err:  # e.g. onnxruntime missing or broken
            raise ModelUnavailableError(f"insightface cannot be imported: {_one_line(err)}") from None
        try:
            # The folder itself, not a name: FaceAnalysis downloads a pack it cannot find by name.
            self.app = FaceAnalysis(name=str(pack), root=str(root), allowed_modules=["detection", "recognition"])
        except Exception as err:  # noqa: BLE001 - a broken pack is a missing model, said in one line
            raise ModelUnavailableError(
                f"insightface model {name} in {pack} could not be loaded "
                f"({'no detection model' if isinstance(err, AssertionError) else type(err).__name__}: {_one_line(err)})"
            ) from None
        if "recognition" not in self.app.models:
            raise ModelUnavailableError(
                f"insightface model {name} in {pack} has no recognition model (an ArcFace .onnx, e.g. w600k_r50.onnx)"
            )
        # ctx_id 0 keeps onnxruntime's providers (CUDA with onnxruntime-gpu, else the CPU).
        self.app.prepare(ctx_id=0, det_size=(640, 640))

    def faces(self, image: Image.Image, upsample: int = 1, cnn_budget_s: float = 0.0) -> list[Face]:
        rgb = np.asarray(image.convert("RGB"))
        h, w = rgb.shape[:2]
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # insightface reads OpenCV's BGR order
        out = []
        for f in self.app.get(bgr):
            if f.embedding is None:
                continue
            left, top, right, bottom = (int(round(float(v))) for v in f.bbox[:4])
            box = (max(0, left), max(0, top), min(w, right), min(h, bottom))  # as dlib's: inside the image
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
            emb = np.asarray(f.normed_embedding, dtype=np.float32)
            pts = None if f.kps is None else np.asarray(f.kps, dtype=np.float32)
            out.append(Face(box=box, embedding=emb, score=float(f.det_score), landmarks=pts))
        return out

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> float:
        return float(1.0 - np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


class FaceAnalyzer:
    """Faces and identity checks with the backend the profile names (built lazily, thread-safe)."""

    def __init__(self, settings: IdentitySettings | None = None):
        self.settings = settings or IdentitySettings()
        self._backend = None
        self._lock = threading.Lock()
        # The backend in use: the profile's, or dlib when insightface could not run and the profile
        # allows the fallback (then `fallback_note` says so, for every result to repeat).
        self.backend_name: str = self.settings.backend
        self.fallback_note: str | None = None
        # Faces per image content: a source is analysed once however many edits and retries it gets.
        self._cache: OrderedDict[str, list[Face]] = OrderedDict()
        self.cache_size = 64

    @property
    def enabled(self) -> bool:
        return self.settings.backend != "none"

    def _get_backend(self):
        if self._backend is None:
            if self.settings.backend == "dlib":
                self._backend = _DlibBackend()
            elif self.settings.backend == "insightface":
                try:
                    self._backend = _InsightFaceBackend(self.settings)
                except ModelUnavailableError as err:
                    if self.settings.fallback != "dlib":
                        raise
                    try:
                        self._backend = _DlibBackend()
                    except ModelUnavailableError as dlib_err:
                        raise ModelUnavailableError(f"{err}; the dlib fallback cannot run either: {dlib_err}") from None
                    self.backend_name = "dlib"
                    self.fallback_note = f"faces checked with dlib, not insightface: {err}"
                    logger.warning("%s", self.fallback_note)
        return self._backend

    @property
    def max_distance(self) -> float:
        """The same-person threshold of the backend in use (dlib's own after a fallback)."""
        return self.settings.threshold(self.backend_name)

    def faces(self, image: Image.Image) -> list[Face]:
        """Faces in `image`, left to right."""
        if not self.enabled:
            return []
        rgb = image.convert("RGB")
        key = hashlib.sha1(rgb.tobytes() + repr(rgb.size).encode()).hexdigest()
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return list(self._cache[key])
            found = sorted(self._get_backend().faces(rgb), key=lambda f: (f.box[0], f.box[1]))
            self._cache[key] = found
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return list(found)

    def distance(self, a: Face | np.ndarray, b: Face | np.ndarray) -> float:
        ea = a.embedding if isinstance(a, Face) else a
        eb = b.embedding if isinstance(b, Face) else b
        return self._get_backend().distance(ea, eb)

    def match(
        self, source: list[Face], result: list[Face], source_size: tuple[int, int], result_size: tuple[int, int]
    ) -> list[tuple[int, int | None, float | None]]:
        """One-to-one pairs (source index, result index or None, embedding distance or None).

        The position term compares each source centre, mapped through the layout the faces agree
        on (`layout`: the same place, mirrored, or re-framed), with the result centre."""
        return self._match(source, result, source_size, result_size)[0]

    def layout(
        self, source: list[Face], result: list[Face], source_size: tuple[int, int], result_size: tuple[int, int],
        emb: np.ndarray | None = None,
    ) -> tuple[str, "Layout"]:
        """How the result's faces sit relative to the source's: ("same", "mirrored", "reframed" or
        "mirrored+reframed", a map from source pixels to result pixels).

        Candidates: the same relative place (a plain resize), the horizontal mirror, and a similarity
        transform (shift, uniform scale, slight rotation) fitted by RANSAC to the pairs of mutually
        nearest embeddings, from either. The candidate that puts the most of those pairs on their
        partner wins; the same place wins ties, and any other must explain LAYOUT_MIN_SUPPORT faces
        (two points fit a similarity exactly, and with two people a mirror looks like a swap: a swap
        is not explained away as a layout)."""
        base = Layout.plain(source_size, result_size)
        if len(source) < 2 or len(result) < 2:
            return "same", base
        if emb is None:
            emb = np.array([[self.distance(s, r) for r in result] for s in source])
        corr = [(i, int(np.argmin(emb[i]))) for i in range(len(source))]
        corr = [(i, j) for i, j in corr if int(np.argmin(emb[:, j])) == i and emb[i, j] < self.max_distance]
        if len(corr) < 2:
            return "same", base
        src = np.array([source[i].center for i, _ in corr], dtype=np.float64)
        dst = np.array([result[j].center for _, j in corr], dtype=np.float64)
        tol = np.array([max(4.0, LAYOUT_TOLERANCE * (result[j].box[2] - result[j].box[0])) for _, j in corr])

        def support(layout: Layout) -> np.ndarray:
            return np.linalg.norm(layout(src) - dst, axis=1) <= tol

        mirrored = Layout.plain(source_size, result_size, mirror=True)
        best_name, best, best_count = "same", base, int(support(base).sum())
        candidates = [("mirrored", mirrored, LAYOUT_MIN_SUPPORT)]
        # fitted in pixels (a crop and a uniform zoom are a similarity there, whatever the aspects)
        pixels = Layout.plain(source_size, source_size)
        for name, prior in (("reframed", pixels), ("mirrored+reframed", Layout.plain(source_size, source_size, True))):
            fitted = _fit_similarity(prior(src), dst, tol)
            if fitted is not None:
                candidates.append((name, prior.then(*fitted), LAYOUT_MIN_SUPPORT))
        for name, layout, min_support in candidates:
            count = int(support(layout).sum())
            if count > best_count and count >= min_support:
                best_name, best, best_count = name, layout, count
        return best_name, best

    def _match(
        self, source: list[Face], result: list[Face], source_size: tuple[int, int], result_size: tuple[int, int]
    ) -> tuple[list[tuple[int, int | None, float | None]], "Layout"]:
        if not source:
            return [], Layout.plain(source_size, result_size)
        if not result:
            return [(i, None, None) for i in range(len(source))], Layout.plain(source_size, result_size)
        from scipy.optimize import linear_sum_assignment

        emb = np.array([[self.distance(s, r) for r in result] for s in source])
        _, layout = self.layout(source, result, source_size, result_size, emb)
        rw, rh = result_size
        mapped = layout(np.array([s.center for s in source], dtype=np.float64)) / (rw, rh)
        centres = np.array([r.center for r in result], dtype=np.float64) / (rw, rh)
        pos = np.linalg.norm(mapped[:, None, :] - centres[None, :, :], axis=2) / np.sqrt(2.0)
        rows, cols = linear_sum_assignment(emb + POSITION_WEIGHT * pos)
        pairs: dict[int, tuple[int | None, float | None]] = {i: (None, None) for i in range(len(source))}
        for i, j in zip(rows, cols):
            if pos[i, j] <= MAX_POSITION_SHIFT:
                pairs[i] = (int(j), float(emb[i, j]))
        return [(i, *pairs[i]) for i in range(len(source))], layout

    def _redetect(self, face: Face, result: Image.Image, layout: "Layout", taken: list[Face],
                  budget_s: float) -> Face | None:
        """Search for a source face where `layout` puts it in `result`: a crop a few face sizes
        wide, detected upsampled (HOG twice upsampled, then the CNN on that crop only, within
        `budget_s`). The found face nearest the expected place that is not already paired."""
        left, top, right, bottom = face.box
        cx, cy = face.center
        size = max(right - left, bottom - top, 1)
        (px, py), (qx, qy) = layout(np.array([[cx, cy], [cx + size, cy]], dtype=np.float64))
        scale = float(np.hypot(qx - px, qy - py)) / size
        expected = size * scale
        half = REDETECT_CROP_FACES * expected / 2
        box = (max(0, int(px - half)), max(0, int(py - half)),
               min(result.width, int(np.ceil(px + half))), min(result.height, int(np.ceil(py + half))))
        if box[2] - box[0] < 16 or box[3] - box[1] < 16:
            return None
        # The crop scaled so that the face is about REDETECT_FACE_PX wide (up to 4x larger: a small
        # face is upsampled, a big one costs fewer pixels), then HOG at two upsamplings (cheap, and
        # each finds faces the other misses), then the CNN on that crop only, within the budget.
        shrink = min(4.0, REDETECT_FACE_PX / max(expected, 1.0))
        crop = result.crop(box)
        if abs(shrink - 1.0) > 0.05:
            crop = crop.resize((max(1, round(crop.width * shrink)), max(1, round(crop.height * shrink))), Image.LANCZOS)
        backend = self._get_backend()
        tries = [(0, 0.0), (1, 0.0), (0, budget_s)] if isinstance(backend, _DlibBackend) else [(1, budget_s)]
        found: list[Face] = []
        for upsample, cnn_budget in tries:
            try:
                with self._lock:  # the detector models are shared with `faces`
                    found = backend.faces(crop, upsample=upsample, cnn_budget_s=cnn_budget)
            except Exception:  # noqa: BLE001 - a failed search is a face not found, as before it
                logger.exception("face re-detection failed")
                return None
            if found:
                break
        best, best_d = None, None
        for cand in found:
            b = tuple(int(round(v / shrink)) for v in cand.box)
            b = (b[0] + box[0], b[1] + box[1], b[2] + box[0], b[3] + box[1])
            cand = Face(box=b, embedding=cand.embedding, score=cand.score, landmarks=None)
            if any(_iou(cand.box, t.box) > 0.3 for t in taken):
                continue
            d = float(np.hypot(cand.center[0] - px, cand.center[1] - py))
            if d <= expected and (best_d is None or d < best_d):
                best, best_d = cand, d
        return best

    def compare(
        self,
        source: Image.Image,
        result: Image.Image,
        *,
        source_faces: list[Face] | None = None,
    ) -> list[FaceCheck]:
        """One check per source face: its distance to the matched result face (None if lost)."""
        if not self.enabled:
            return []
        src = self.faces(source) if source_faces is None else source_faces
        if not src:
            return []
        res = self.faces(result)
        pairs, layout = self._match(src, res, source.size, result.size)
        if any(j is None for _, j, _ in pairs):
            # Before calling a face lost, look for it where it should be (a blurred or turned face
            # the whole-image detector missed).
            import time

            deadline = time.thread_time() + REDETECT_BUDGET_S
            taken = [res[j] for _, j, _ in pairs if j is not None]
            for k, (i, j, _) in enumerate(pairs):
                if j is not None:
                    continue
                found = self._redetect(src[i], result.convert("RGB"), layout, taken,
                                       max(0.0, deadline - time.thread_time()))
                if found is not None:
                    taken.append(found)
                    pairs[k] = (i, -1, self.distance(src[i], found))
        checks = []
        for i, j, dist in pairs:
            checks.append(FaceCheck(
                face=i,
                distance=None if dist is None else round(dist, 4),
                same_person=dist is not None and dist < self.max_distance,
                box=tuple(int(v) for v in src[i].box),
            ))
        return checks


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def describe_faces(boxes: list[tuple[int, int, int, int]]) -> list[str]:
    """Where each face is, in the words a person uses, for faces numbered 1, 2, ... left to right
    (the order of `FaceAnalyzer.faces`): "the person on the left", "the 2nd person from the left",
    "the person in the middle", "the person on the right"; one per box, in the order given.
    The rank alone decides (not where in the picture a face is), so a consent question, a check
    and a note always describe the same person with the same words."""
    n = len(boxes)
    order = sorted(range(n), key=lambda k: (boxes[k][0], boxes[k][1]))
    out = [""] * n
    for rank, k in enumerate(order):
        if n == 1:
            text = "the person in the photo"
        elif rank == 0:
            text = "the person on the left"
        elif rank == n - 1:
            text = "the person on the right"
        elif n % 2 == 1 and rank == n // 2:
            text = "the person in the middle"
        elif rank < n / 2:
            text = f"the {_ordinal(rank + 1)} person from the left"
        else:
            text = f"the {_ordinal(n - rank)} person from the right"
        out[k] = text
    return out


def face_labels(boxes: list[tuple[int, int, int, int]]) -> list[str]:
    """"face N (where)" for each box, N counted from 1, left to right: how notes, the checks a
    surface shows and consent questions name a person."""
    n = len(boxes)
    order = sorted(range(n), key=lambda k: (boxes[k][0], boxes[k][1]))
    number = {k: rank + 1 for rank, k in enumerate(order)}
    return [f"face {number[k]} ({where})" for k, where in enumerate(describe_faces(boxes))]


def describe_checks(checks: list[FaceCheck]) -> str | None:
    """A plain sentence for the planner/user when a face is lost or drifts; None when all kept.
    Faces are named as everywhere a person reads them: 1-based, left to right, with where they
    are ("face 2 (the person on the right) is lost in the result")."""
    boxes = [c.box for c in checks]
    where = describe_faces(boxes) if checks and all(b is not None for b in boxes) else [None] * len(checks)

    def name(c: FaceCheck, k: int, extra: str = "") -> str:
        inside = ", ".join(p for p in (where[k], extra) if p)
        return f"{c.face + 1} ({inside})" if inside else str(c.face + 1)

    lost = [name(c, k) for k, c in enumerate(checks) if c.distance is None]
    drift = [name(c, k, f"distance {c.distance:.2f}") for k, c in enumerate(checks)
             if c.distance is not None and not c.same_person]
    parts = []
    if lost:
        parts.append(f"face{'s' if len(lost) > 1 else ''} {', '.join(lost)} "
                     f"{'are' if len(lost) > 1 else 'is'} lost in the result")
    if drift:
        parts.append(f"face{'s' if len(drift) > 1 else ''} {', '.join(drift)} still "
                     f"{'look' if len(drift) > 1 else 'looks'} like a different person")
    return "; ".join(parts) if parts else None
