"""`atelier --help` and `atelier ingest` through the installed console script."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from PIL import Image


def _run(*args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "ui.cli", *args], capture_output=True, text=True, env=env, timeout=120)


def test_help_lists_the_subcommands():
    out = _run("--help").stdout
    for name in ("chat", "ui", "serve", "mcp", "ingest", "screen", "seal", "verify", "eval", "bench"):
        assert name in out


def test_ingest_prints_one_ref_per_file_and_rejects_bad_ones(tmp_path):
    good_png = tmp_path / "a.png"
    Image.new("RGB", (32, 32), "red").save(good_png)
    good_jpg = tmp_path / "b.jpg"
    Image.new("RGB", (32, 24), "blue").save(good_jpg, quality=90)
    good_webp = tmp_path / "c.webp"
    Image.new("RGB", (24, 24), "green").save(good_webp)
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image at all")
    env = {"ATELIER_STORE__ROOT": str(tmp_path / "data")}

    ok = _run("ingest", "--profile", "tiny", str(good_png), str(good_jpg), str(good_webp), env_extra=env)
    assert ok.returncode == 0, ok.stderr
    refs = ok.stdout.split()
    assert len(refs) == 3 and all(r.startswith("img_") for r in refs)

    mixed = _run("ingest", "--profile", "tiny", str(good_png), str(bad), env_extra=env)
    assert mixed.returncode != 0
    assert mixed.stdout.split() == refs[:1]
    assert mixed.stderr.strip().splitlines() == ["rejected: notes.png: not an image Atelier can read (use PNG, JPEG or WebP)"]
