"""CLI: atelier compare SOURCE RESULT [--json] (faces kept, shift, scale, rotation, outside change)."""

from __future__ import annotations

import json

import cv2
import numpy as np
from PIL import Image

from ui.cli import main


def test_an_image_against_itself_is_unmoved_and_everyone_kept(face_photos, capsys):
    group = str(face_photos["group"])
    assert main(["compare", group, group, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= {"source", "result", "size", "faces", "all_same_person", "drift"}
    assert set(report["drift"]) >= {"shift_x_px", "shift_y_px", "shift_px", "scale", "rotation_deg",
                                    "outside_change", "mean_change", "changed_fraction", "registered"}
    d = report["drift"]
    assert d["registered"] and d["shift_px"] == 0 and d["scale"] == 1 and d["rotation_deg"] == 0
    assert d["outside_change"] == 0 and d["mean_change"] == 0
    assert len(report["faces"]) >= 2 and report["all_same_person"] is True
    assert all(set(f) >= {"face", "distance", "same_person", "box"} and f["same_person"] for f in report["faces"])
    assert main(["compare", group, group]) == 0
    out = capsys.readouterr().out
    assert "face 1: identity distance 0.000 (same person)" in out
    assert "shift 0.0 px" in out and "scale 1.000 (no zoom)" in out


def test_a_shifted_zoomed_result_reads_as_such(face_photos, tmp_path, capsys):
    source = Image.open(face_photos["group"]).convert("RGB")
    a = np.asarray(source)
    h, w = a.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 0, 1.03)
    m[:, 2] += (6, 0)
    moved = tmp_path / "moved.png"
    Image.fromarray(cv2.warpAffine(a, m, (w, h), borderMode=cv2.BORDER_REFLECT)).save(moved)
    assert main(["compare", str(face_photos["group"]), str(moved), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["drift"]
    assert abs(d["shift_x_px"] - 6) < 0.5 and abs(d["shift_y_px"]) < 0.5 and abs(d["scale"] - 1.03) < 0.005
    assert d["outside_change"] > 0.02  # uncorrected drift shows as change outside the edit


def test_bad_files_are_one_line_errors(tmp_path, capsys):
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 48), (10, 20, 30)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["compare", str(good), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("atelier compare: ") and "bad.png" in err and "\n" not in err
    assert main(["compare", str(good), str(tmp_path / "missing.png")]) == 2
    assert "cannot read file" in capsys.readouterr().err
