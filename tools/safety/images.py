"""Image screening: NSFW detection (NudeNet, optional) and the public-figure face gallery."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from tools.safety.screener import Decision, reasons, refusal_reason
from tools.settings import SafetySettings, default_data_root

# NudeNet classes that make an image sexual (covered parts, faces, feet... are not).
NSFW_CLASSES = {
    "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED", "ANUS_EXPOSED", "BUTTOCKS_EXPOSED",
}


def default_gallery_dir() -> Path:
    return Path(default_data_root()) / "gallery"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "person"


class FaceGallery:
    """Protected public figures as face embeddings, one JSON file per person in a directory."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self._people: dict[str, np.ndarray] | None = None

    def people(self) -> dict[str, np.ndarray]:
        if self._people is None:
            people = {}
            if self.dir.is_dir():
                for f in sorted(self.dir.glob("*.json")):
                    data = json.loads(f.read_text())
                    people[data["name"]] = np.asarray(data["embeddings"], dtype=np.float64)
            self._people = people
        return self._people

    def add(self, name: str, embeddings: list[np.ndarray]) -> Path:
        if not embeddings:
            raise ValueError("no face embeddings to add")
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{_slug(name)}.json"
        old = json.loads(path.read_text())["embeddings"] if path.exists() else []
        data = {"name": name, "embeddings": old + [np.asarray(e, dtype=float).tolist() for e in embeddings]}
        path.write_text(json.dumps(data))
        self._people = None
        return path

    def nearest(self, embedding: np.ndarray) -> tuple[str | None, float]:
        best, best_d = None, float("inf")
        for name, embs in self.people().items():
            d = float(np.min(np.linalg.norm(embs - np.asarray(embedding)[None, :], axis=1)))
            if d < best_d:
                best, best_d = name, d
        return best, best_d

    def __len__(self) -> int:
        return len(self.people())


class ImageScreener:
    """Screens uploads and results: NSFW (NudeNet when installed) and the public-figure gallery."""

    def __init__(self, settings: SafetySettings | None = None, analyzer=None):
        self.settings = settings or SafetySettings()
        self._analyzer = analyzer
        self.gallery = FaceGallery(self.settings.gallery_dir or default_gallery_dir())
        self._detector = None
        self._nsfw_state: str | None = None  # "ready" | "absent"
        self._lock = threading.Lock()

    # -- NSFW ------------------------------------------------------------------------------------
    @property
    def nsfw_available(self) -> bool:
        return self._nsfw() is not None

    def _nsfw(self):
        if self.settings.nsfw_backend != "nudenet":
            return None
        if self._nsfw_state is None:
            try:
                from nudenet import NudeDetector  # AGPL-3.0: optional extra `nsfw`, imported lazily

                self._detector = NudeDetector()
                self._nsfw_state = "ready"
            except Exception:  # noqa: BLE001 - not installed or no model: screen without it
                self._nsfw_state = "absent"
        return self._detector if self._nsfw_state == "ready" else None

    def nsfw_detections(self, image: Image.Image) -> list[dict]:
        detector = self._nsfw()
        if detector is None:
            return []
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        with self._lock:
            found = detector.detect(bgr)
        return [d for d in found if d.get("class") in NSFW_CLASSES and d.get("score", 0) >= self.settings.nsfw_threshold]

    # -- faces -----------------------------------------------------------------------------------
    def _faces(self, image: Image.Image):
        if self._analyzer is None:
            try:
                from tools.identity import FaceAnalyzer

                self._analyzer = FaceAnalyzer()
            except Exception:  # noqa: BLE001 - no face backend installed: no gallery check
                self._analyzer = False
        if not self._analyzer:
            return []
        return self._analyzer.faces(image)

    def public_figures(self, image: Image.Image) -> list[tuple[str, float]]:
        if len(self.gallery) == 0:
            return []
        hits = []
        for face in self._faces(image):
            name, d = self.gallery.nearest(face.embedding)
            if name is not None and d <= self.settings.gallery_max_distance:
                hits.append((name, round(d, 3)))
        return hits

    # -- decision --------------------------------------------------------------------------------
    def screen(self, image: Image.Image) -> Decision:
        nsfw = self.nsfw_detections(image)
        if nsfw:
            labels = sorted({d["class"] for d in nsfw})
            return Decision(decision="refuse", category="sexual", reason=refusal_reason("sexual"), matched=", ".join(labels))
        figures = self.public_figures(image)
        if figures:
            names = ", ".join(sorted({n for n, _ in figures}))
            return Decision(decision="refuse", category="public_figure", reason=refusal_reason("public_figure"), matched=names)
        return Decision(decision="allow", category="none", reason=reasons()["allow"])
