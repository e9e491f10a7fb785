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
embedding distance plus position) and returns one `FaceCheck` per source face.
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
# The CNN detector runs (when HOG finds nothing) only on images up to this side: it is slow on a CPU.
CNN_FALLBACK_MAX_SIDE = 800
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

    def _detect(self, arr: np.ndarray, upsample: int) -> list:
        rects = list(self.detector(arr, upsample))
        if not rects and max(arr.shape[:2]) <= CNN_FALLBACK_MAX_SIDE:
            # The CNN detector finds turned and small faces HOG misses (slower, so only as fallback).
            if self._cnn is None:
                self._cnn = self.dlib.cnn_face_detection_model_v1(str(self._cnn_path))
            rects = [d.rect for d in self._cnn(arr, upsample)]
        return rects

    def faces(self, image: Image.Image, upsample: int = 1) -> list[Face]:
        arr = np.ascontiguousarray(np.asarray(image.convert("RGB")))
        out = []
        for rect in self._detect(arr, upsample):
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

    def faces(self, image: Image.Image, upsample: int = 1) -> list[Face]:
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
        """One-to-one pairs (source index, result index or None, embedding distance or None)."""
        if not source:
            return []
        if not result:
            return [(i, None, None) for i in range(len(source))]
        from scipy.optimize import linear_sum_assignment

        def norm_center(face: Face, size: tuple[int, int]) -> np.ndarray:
            cx, cy = face.center
            return np.array([cx / size[0], cy / size[1]])

        diag = np.sqrt(2.0)
        emb = np.array([[self.distance(s, r) for r in result] for s in source])
        pos = np.array([[np.linalg.norm(norm_center(s, source_size) - norm_center(r, result_size)) / diag
                         for r in result] for s in source])
        rows, cols = linear_sum_assignment(emb + POSITION_WEIGHT * pos)
        pairs: dict[int, tuple[int | None, float | None]] = {i: (None, None) for i in range(len(source))}
        for i, j in zip(rows, cols):
            if pos[i, j] <= MAX_POSITION_SHIFT:
                pairs[i] = (int(j), float(emb[i, j]))
        return [(i, *pairs[i]) for i in range(len(source))]

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
        checks = []
        for i, j, dist in self.match(src, res, source.size, result.size):
            checks.append(FaceCheck(
                face=i,
                distance=None if dist is None else round(dist, 4),
                same_person=dist is not None and dist < self.max_distance,
                box=tuple(int(v) for v in src[i].box),
            ))
        return checks


def describe_checks(checks: list[FaceCheck]) -> str | None:
    """A plain sentence for the planner/user when a face is lost or drifts; None when all kept."""
    lost = [c.face + 1 for c in checks if c.distance is None]
    drift = [c for c in checks if c.distance is not None and not c.same_person]
    parts = []
    if lost:
        parts.append(f"face{'s' if len(lost) > 1 else ''} {', '.join(map(str, lost))} "
                     f"{'are' if len(lost) > 1 else 'is'} lost in the result")
    if drift:
        names = ", ".join(f"{c.face + 1} (distance {c.distance:.2f})" for c in drift)
        parts.append(f"face{'s' if len(drift) > 1 else ''} {names} still "
                     f"{'look' if len(drift) > 1 else 'looks'} like a different person")
    return "; ".join(parts) if parts else None
