"""Drift control (tools/drift.py): shift/zoom/rotation estimate, re-alignment, paste-back."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from PIL import Image

from tools import drift


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    skimage_data = pytest.importorskip("skimage.data")
    return Image.fromarray(skimage_data.astronaut())  # 512 x 512, a real photo


def local_edit(image: Image.Image) -> Image.Image:
    """A red patch over her arm: the part an edit meant to change."""
    a = np.asarray(image).copy()
    a[300:420, 330:470] = (a[300:420, 330:470] * 0.3 + np.array([200, 40, 40]) * 0.7).astype(np.uint8)
    return Image.fromarray(a)


def move(image: Image.Image, dx: float = 0.0, dy: float = 0.0, zoom: float = 1.0, rotation: float = 0.0) -> Image.Image:
    """What Qwen-Image-Edit does by accident: the whole picture shifted, zoomed about its centre, turned."""
    a = np.asarray(image)
    h, w = a.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), rotation, zoom)
    m[:, 2] += (dx, dy)
    return Image.fromarray(cv2.warpAffine(a, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))


def test_a_shifted_and_zoomed_edit_is_realigned_and_the_rest_pasted_back(photo):
    edited = local_edit(photo)
    result = move(edited, dx=6, zoom=1.03)
    out, report = drift.correct(photo, result)
    assert abs(report.shift_x_px - 6) < 0.5 and abs(report.shift_y_px) < 0.5
    assert abs(report.scale - 1.03) < 0.005 and abs(report.rotation_deg) < 0.2
    assert report.realigned and report.outside_change_before > 0.05
    assert report.outside_change < 0.01
    assert 0.6 < report.pasted_back < 0.97
    # the edit is kept: the patch is where it was in the source grid
    patch = np.asarray(out, dtype=float)[320:400, 350:450]
    assert np.abs(patch - np.asarray(edited, dtype=float)[320:400, 350:450]).mean() < 8
    # untouched pixels are the original's, exactly
    assert np.array_equal(np.asarray(out)[:200, :200], np.asarray(photo)[:200, :200])
    figures = report.figures()
    assert figures["realigned"] == 1.0 and figures["outside_change"] < 0.01
    assert report.note() == "re-aligned a 6 px shift and a 3% zoom; kept the untouched " \
        f"{report.pasted_back * 100:.0f}% from the original"


def test_rotation_and_shrink_are_measured(photo):
    report = drift.measure(photo, move(local_edit(photo), dx=3, dy=-2, zoom=0.97, rotation=1.5))
    assert abs(report.shift_x_px - 3) < 0.5 and abs(report.shift_y_px + 2) < 0.5
    assert abs(report.scale - 0.97) < 0.005 and abs(abs(report.rotation_deg) - 1.5) < 0.2
    assert report.outside_change > 0.05 and not report.realigned  # measure corrects nothing


def test_an_unmoved_edit_gets_no_correction(photo):
    edited = local_edit(photo)
    out, report = drift.correct(photo, edited)
    assert not report.realigned and report.shift_px < 0.2 and abs(report.scale - 1) < 0.001
    assert report.outside_change < 0.005
    assert report.note() is None or "re-aligned" not in report.note()
    same, report = drift.correct(photo, photo)
    assert np.array_equal(np.asarray(same), np.asarray(photo)) and not report.realigned


def test_a_small_retouch_is_kept_not_pasted_over(photo):
    a = np.asarray(photo).copy()
    a[100:112, 250:262] = (a[100:112, 250:262] * 0.5 + 120).astype(np.uint8)  # a 12 px blemish removed
    out, report = drift.correct(photo, Image.fromarray(a))
    assert np.abs(np.asarray(out, dtype=float)[102:110, 252:260] - a[102:110, 252:260]).max() <= 1
    faint = np.clip(np.asarray(photo).astype(int) + 2, 0, 255).astype(np.uint8)
    _, report = drift.correct(photo, Image.fromarray(faint))
    assert report.pasted_back == 0.0  # no visible change found: the model's result is kept as it is


def test_a_global_relight_like_change_is_not_pasted_back(photo):
    relit = Image.fromarray(np.clip(np.asarray(photo) * 0.8 + 30, 0, 255).astype(np.uint8))
    out, report = drift.correct(photo, relit)  # an edit that changed the light everywhere
    assert report.pasted_back == 0.0 and not report.realigned
    assert np.array_equal(np.asarray(out), np.asarray(relit))
    # relight mode: re-align the geometry, never paste back; outside change is the geometric residual
    out, report = drift.correct(photo, move(relit, dx=6, zoom=1.03), paste_back=False)
    assert report.realigned and report.pasted_back == 0.0
    assert abs(report.shift_x_px - 6) < 1.0 and abs(report.scale - 1.03) < 0.01
    assert report.outside_change < report.outside_change_before / 2
    assert report.mean_change > 0.05  # the light change itself stays


def test_unrelated_images_are_left_alone():
    rng = np.random.default_rng(3)
    a = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    b = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    out, report = drift.correct(a, b)
    assert not report.realigned and report.pasted_back == 0.0
    assert np.array_equal(np.asarray(out), np.asarray(b))


def test_a_given_mask_and_face_boxes_bound_the_paste_back(photo):
    edited = local_edit(photo)
    mask = np.zeros((512, 512), bool)
    mask[280:440, 310:490] = True
    _, report = drift.correct(photo, move(edited, dx=4), mask=mask)
    assert abs(report.changed_fraction - mask.mean()) < 0.01 and report.outside_change < 0.01
    # a change inside a face box takes in the whole face
    face = (320, 290, 480, 430)
    grown = drift.change_mask(np.asarray(photo, np.float32) / 255, np.asarray(edited, np.float32) / 255, [face])
    assert grown[face[1]:face[3], face[0]:face[2]].all()


def test_correction_at_1024_is_fast(photo):
    big = photo.resize((1024, 1024), Image.LANCZOS)
    result = move(local_edit(big), dx=12, zoom=1.03)
    start = time.perf_counter()
    _, report = drift.correct(big, result)
    elapsed = time.perf_counter() - start
    assert report.realigned and report.outside_change < 0.01
    assert elapsed < 5.0  # ~0.5 s on one CPU core


class _DriftingEngine:
    """An edit engine that does what Qwen-Image-Edit users complain of: it paints the edit, then
    shifts the whole picture 6 px and zooms 3% (relight: brightens everything, same move)."""

    def __init__(self, relight: bool = False):
        self.relight = relight

    def edit_size(self, width, height):
        return width, height

    def adapter_names(self, role):
        return []

    def edit(self, instruction, images, **kwargs):
        source = images[0]
        if self.relight:
            changed = Image.fromarray(np.clip(np.asarray(source) * 0.8 + 30, 0, 255).astype(np.uint8))
        else:
            changed = local_edit(source)
        return move(changed, dx=6, zoom=1.03)


@pytest.fixture()
def drifting_ctx(tmp_path):
    from agent.config import load_profile
    from tools.image_tools import ToolContext
    from tools.settings import IdentitySettings
    from tools.store import ImageStore

    profile = load_profile("tiny")
    ctx = ToolContext(store=ImageStore(tmp_path / "images"), engine=profile.engine,
                      identity=IdentitySettings(backend="none"), session="t")
    return ctx


def test_edit_image_realigns_and_pastes_back(drifting_ctx, photo):
    from tools.image_tools import run_tool

    ctx = drifting_ctx
    ctx.get_engine = lambda: _DriftingEngine()
    ref = ctx.store.put(photo, session="t", origin="upload").ref
    out = run_tool(ctx, "edit_image", {"image": ref, "instruction": "paint her sleeve red"})
    d = out.result.drift
    assert abs(d["shift_x_px"] - 6) < 0.5 and abs(d["scale"] - 1.03) < 0.005 and d["realigned"] == 1.0
    assert d["outside_change"] < 0.01 < d["outside_change_before"] and d["pasted_back"] > 0.6
    assert "re-aligned a 6 px shift and a 3% zoom" in out.result.note and "from the original" in out.result.note
    staged, _ = ctx.store.load_staged(out.staged[0].staging_id)
    assert np.array_equal(np.asarray(staged)[:200, :200], np.asarray(photo)[:200, :200])
    assert out.staged[0].metadata["drift"] == d


def test_relight_image_realigns_but_does_not_paste_back(drifting_ctx, photo):
    from tools.image_tools import run_tool

    ctx = drifting_ctx
    ctx.get_engine = lambda: _DriftingEngine(relight=True)
    ref = ctx.store.put(photo, session="t", origin="upload").ref
    out = run_tool(ctx, "relight_image", {"image": ref, "direction": "left"})
    d = out.result.drift
    assert d["realigned"] == 1.0 and d["pasted_back"] == 0.0 and abs(d["shift_x_px"] - 6) < 1.0
    assert d["outside_change"] < d["outside_change_before"] / 2  # residual geometric drift, light taken out
    assert d["mean_change"] > 0.05  # the new light stays
    assert "re-aligned" in out.result.note and "from the original" not in out.result.note
