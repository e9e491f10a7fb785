"""Image screening: public-figure face gallery (built from the portrait insightface ships) and NSFW."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tools.safety import FaceGallery, ImageScreener
from tools.settings import SafetySettings

pytest.importorskip("dlib")


@pytest.fixture(scope="module")
def analyzer():
    from tools.identity import FaceAnalyzer

    return FaceAnalyzer()


@pytest.fixture(scope="module")
def demo_gallery(tmp_path_factory, face_photos, analyzer):
    """The demo gallery: one public figure, from the sample portrait insightface ships."""
    portrait = Image.open(face_photos["portrait"]).convert("RGB").resize((224, 224), Image.LANCZOS)
    faces = analyzer.faces(portrait)
    assert len(faces) == 1
    gallery_dir = tmp_path_factory.mktemp("gallery")
    FaceGallery(gallery_dir).add("Tom Hanks", [faces[0].embedding])
    return gallery_dir


def test_gallery_refuses_a_photo_with_the_public_figure(demo_gallery, face_photos, analyzer, paste_face):
    screener = ImageScreener(SafetySettings(gallery_dir=str(demo_gallery), nsfw_backend="none"), analyzer)
    group = Image.open(face_photos["group"]).convert("RGB")
    assert screener.screen(group).decision == "allow"
    portrait = Image.open(face_photos["portrait"]).convert("RGB").resize((224, 224), Image.LANCZOS)
    target = analyzer.faces(group)[2]
    composite = paste_face(group, target.box, portrait, analyzer.faces(portrait)[0].box)
    d = screener.screen(composite)
    assert (d.decision, d.category, d.matched) == ("refuse", "public_figure", "Tom Hanks")


def test_gallery_add_accumulates_photos_of_a_person(tmp_path):
    g = FaceGallery(tmp_path)
    g.add("Jane Public", [np.zeros(128)])
    g.add("Jane Public", [np.ones(128) * 0.1])
    assert len(g) == 1
    name, d = g.nearest(np.ones(128) * 0.1)
    assert name == "Jane Public" and d == pytest.approx(0.0)


def test_empty_gallery_and_no_faces_allow(tmp_path):
    screener = ImageScreener(SafetySettings(gallery_dir=str(tmp_path), nsfw_backend="none"))
    assert screener.screen(Image.new("RGB", (64, 64), (120, 130, 140))).decision == "allow"


def test_nsfw_backend_none_is_a_clean_fallback():
    screener = ImageScreener(SafetySettings(nsfw_backend="none"))
    assert screener.nsfw_available is False
    assert screener.nsfw_detections(Image.new("RGB", (64, 64))) == []


def test_nudenet_runs_on_a_harmless_image_when_installed(face_photos):
    pytest.importorskip("nudenet")
    screener = ImageScreener(SafetySettings(nsfw_backend="nudenet"), analyzer=False)
    assert screener.nsfw_available
    group = Image.open(face_photos["group"]).convert("RGB")
    d = screener.screen(group)
    assert d.decision == "allow", d
