"""Budgets for files and images: a user-named file is read only when it is a regular file within
the upload limit (at most limit + 1 bytes, never blocking), and an image over the working budget
is stored at the working size with its original size in `resized_from`."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tools.store as store_module
from tools.adjust import LUMA, adjust, linear_to_srgb, srgb_to_linear, white_balance_gains
from tools.errors import BadImageError
from tools.settings import LimitSettings
from tools.store import ImageStore, decode_upload, read_upload_file, resize_note, working_size

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path) -> ImageStore:
    return ImageStore(tmp_path / "images")


def _png(image: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def _refused(fn, *args, **kwargs) -> str:
    """The one-line message of the BadImageError `fn` raises, run in a thread so that a read that
    blocks fails the test instead of hanging it."""
    outcome: dict = {}

    def target():
        try:
            fn(*args, **kwargs)
            outcome["error"] = None
        except BaseException as err:  # noqa: BLE001 - reported below
            outcome["error"] = err

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "reading the file blocked"
    err = outcome["error"]
    assert isinstance(err, BadImageError), f"expected BadImageError, got {err!r}"
    text = str(err)
    assert "\n" not in text
    return text


# --- files that are not image files are refused at once, from their stat -------------------

@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_dev_zero_is_refused_as_a_device(store, monkeypatch):
    reads = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: reads.append(n) or real_read(fd, n))
    text = _refused(store.ingest, "/dev/zero")
    assert text == "zero: is a character device, not an image file"
    assert reads == []  # nothing was read


def test_symlink_to_a_device_is_refused(tmp_path, store):
    if not os.path.exists("/dev/zero"):
        pytest.skip("needs /dev/zero")
    link = tmp_path / "photo.png"
    link.symlink_to("/dev/zero")
    assert _refused(store.ingest, link) == "photo.png: is a character device, not an image file"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_without_hanging(tmp_path, store):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert _refused(store.ingest, fifo) == "pipe.png: is a FIFO (named pipe), not an image file"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_swapped_in_after_the_stat_cannot_hang(tmp_path, monkeypatch):
    """The stat said regular file (the FIFO came after it): the non-blocking open and the fstat of
    what was opened still refuse it (a plain open would wait for a writer forever)."""
    fifo = tmp_path / "swapped.png"
    os.mkfifo(fifo)
    regular = os.stat(__file__)
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: regular if os.fspath(p) == str(fifo) else real_stat(p, *a, **k))
    text = _refused(read_upload_file, fifo, LimitSettings(), name="swapped.png")
    assert text == "swapped.png: is a FIFO (named pipe), not an image file"


def test_directory_is_refused(tmp_path, store):
    folder = tmp_path / "holiday"
    folder.mkdir()
    assert _refused(store.ingest, folder) == "holiday: is a directory, not an image file"


def test_sparse_3gb_file_is_refused_from_its_size_without_reading(tmp_path, store, monkeypatch):
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as fh:
        fh.truncate(3 * 1024**3)  # sparse: no blocks on disk
    reads = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: reads.append(n) or real_read(fd, n))
    text = _refused(store.ingest, huge)
    assert text.startswith("huge.png: 3221.2 MB is over the") and text.endswith("MB upload limit")
    assert reads == []


def test_read_stops_one_byte_over_the_limit(tmp_path, monkeypatch):
    """A file whose stat says small but that holds more (it grew, or the stat lied) is read no
    further than limit + 1 bytes and refused."""
    path = tmp_path / "grows.png"
    path.write_bytes(b"\0" * 10_000)
    small = os.stat_result((stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, 10, 0, 0, 0))
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: small)
    monkeypatch.setattr(os, "fstat", lambda fd: small)
    got = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: got.append(n) or real_read(fd, n))
    text = _refused(read_upload_file, path, LimitSettings(max_upload_bytes=1000), name="grows.png")
    assert "over the" in text and text.startswith("grows.png:")
    assert sum(got) <= 1001


def test_a_regular_file_is_read_whole(tmp_path):
    data = _png(Image.new("RGB", (16, 16), (10, 20, 30)))
    path = tmp_path / "ok.png"
    path.write_bytes(data)
    assert read_upload_file(path, LimitSettings()) == data


# --- the working size ------------------------------------------------------------------------

def test_working_size_fits_both_budgets():
    limits = LimitSettings(max_working_pixels=1_000_000, max_working_side=800)
    assert working_size(640, 480, limits) == (640, 480)
    w, h = working_size(4000, 3000, limits)
    assert w <= 800 and w * h <= 1_000_000 and abs(w / h - 4 / 3) < 0.01
    w, h = working_size(2000, 2000, LimitSettings(max_working_pixels=1_000_000, max_working_side=4096))
    assert (w, h) == (1000, 1000)


@pytest.fixture(scope="module")
def big_png() -> bytes:
    """7000 x 7000 (49 MP, under the 50 MP limit): a few hundred KB that decode to 147 MB."""
    bands = ((np.arange(7000) // 64) % 256).astype(np.uint8)
    arr = np.empty((7000, 7000, 3), np.uint8)
    arr[..., 0] = bands[None, :]
    arr[..., 1] = bands[:, None]
    arr[..., 2] = 128
    return _png(Image.fromarray(arr), compress_level=1)


def test_7000_square_png_is_stored_at_the_working_size(store, big_png):
    limits = store.limits
    assert 7000 * 7000 <= limits.max_pixels and 7000 <= limits.max_side  # within the hard limits
    version = store.ingest(big_png, filename="big.png")
    assert version.metadata["resized_from"] == [7000, 7000]
    assert version.width * version.height <= limits.max_working_pixels
    assert max(version.width, version.height) <= limits.max_working_side
    assert version.width == version.height  # aspect kept
    assert store.open(version.ref).size == (version.width, version.height)
    assert resize_note(version) == (f"big.png: 7000x7000 is over the working size; stored and edited at "
                                    f"{version.width}x{version.height}")


def test_small_upload_is_kept_as_it_is(store):
    version = store.ingest(_png(Image.new("RGB", (640, 480), (1, 2, 3))))
    assert (version.width, version.height) == (640, 480)
    assert "resized_from" not in version.metadata and resize_note(version) is None


def test_jpeg_is_decoded_at_reduced_scale_and_resampled(tmp_path):
    rng = np.random.default_rng(0)
    base = np.zeros((1200, 1600, 3), np.uint8)
    base[:, :800] = (200, 40, 40)
    base[:, 800:] = (40, 40, 200)
    noisy = np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="JPEG", quality=92)
    limits = LimitSettings(max_working_pixels=120_000, max_working_side=4096)
    store = ImageStore(tmp_path / "images", limits)
    version = store.ingest(buf.getvalue(), filename="cam.jpg")
    assert version.metadata["resized_from"] == [1600, 1200]
    assert (version.width, version.height) == working_size(1600, 1200, limits)
    out = np.asarray(store.open(version.ref), dtype=np.float64)
    left, right = out[:, : out.shape[1] // 2 - 4], out[:, out.shape[1] // 2 + 4:]
    np.testing.assert_allclose(left.mean(axis=(0, 1)), (200, 40, 40), atol=4)
    np.testing.assert_allclose(right.mean(axis=(0, 1)), (40, 40, 200), atol=4)


def test_resized_from_is_the_upright_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    buf = io.BytesIO()
    Image.new("RGB", (400, 200), (90, 90, 90)).save(buf, format="JPEG", exif=exif.tobytes())
    image = decode_upload(buf.getvalue(), LimitSettings(max_working_pixels=20_000), name="turned.jpg")
    assert image.info["resized_from"] == [200, 400]
    assert image.height > image.width and image.width * image.height <= 20_000


@pytest.mark.parametrize("mode", ["P", "RGBA", "I;16"])
def test_other_modes_come_out_rgb_at_the_working_size(mode):
    base = Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 200, 3), np.uint8))
    image = base.convert(mode) if mode != "I;16" else Image.fromarray(
        (np.arange(300 * 200).reshape(300, 200) % 65535).astype(np.uint16))
    out = decode_upload(_png(image), LimitSettings(max_working_pixels=10_000), name="x.png")
    assert out.mode == "RGB" and out.width * out.height <= 10_000 and out.info["resized_from"] == [200, 300]


def test_over_the_hard_pixel_limit_is_still_refused(store):
    over = _png(Image.new("1", (8000, 7000)))  # 56 MP > 50 MP, a few KB
    with pytest.raises(BadImageError) as err:
        store.ingest(over, filename="over.png")
    assert str(err.value) == "over.png: 8000×7000 px = 56 MP; the limit is 50 MP"
    side = _png(Image.new("1", (12_500, 16)))  # one side over max_side
    with pytest.raises(BadImageError) as err:
        store.ingest(side, filename="wide.png")
    assert str(err.value) == "wide.png: 12500×16 px; its longest side is 12500 px; the limit is 12000 px"


def test_pil_bomb_guard_matches_max_pixels():
    limit = LimitSettings().max_pixels
    assert 2 * Image.MAX_IMAGE_PIXELS == limit  # PIL refuses above twice its figure
    store_module.match_bomb_guard(LimitSettings(max_pixels=1000))  # a small limit never lowers it
    assert 2 * Image.MAX_IMAGE_PIXELS == limit
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(_png(Image.new("1", (8000, 7000)))))


# --- adjust works on tables, with the float64 arithmetic of the whole-image version ---------

def _reference_adjust(image, exposure_ev, white_balance_k, contrast, saturation):
    """The whole-image float64 version (identity steps skipped, as `adjust` does)."""
    values = np.asarray(image, dtype=np.float64) / 255.0
    if exposure_ev != 0 or white_balance_k != 6500:
        linear = srgb_to_linear(values)
        if exposure_ev != 0:
            linear = linear * (2.0 ** exposure_ev)
        if white_balance_k != 6500:
            linear = linear * white_balance_gains(white_balance_k)
        values = linear_to_srgb(linear)
    if contrast != 1:
        values = (values - 0.5) * contrast + 0.5
    if saturation != 1:
        luma = (values @ LUMA)[..., None]
        values = luma + saturation * (values - luma)
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("settings", [(1.0, 6500, 1.0, 1.0), (-0.7, 3200, 1.3, 1.0), (0.4, 9000, 0.8, 1.6),
                                      (0.0, 6500, 1.0, 0.2)])
def test_adjust_equals_the_per_pixel_formula(settings):
    exposure, kelvin, contrast, saturation = settings
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (1100, 1000, 3), np.uint8))
    out = adjust(image, exposure_ev=exposure, white_balance_k=kelvin, contrast=contrast, saturation=saturation)
    np.testing.assert_array_equal(np.asarray(out), _reference_adjust(image, exposure, kelvin, contrast, saturation))


# --- the CLI: one line, no traceback -----------------------------------------------------------

def _cli(tmp_path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ATELIER_HOME": str(tmp_path / "home")}
    return subprocess.run([sys.executable, "-m", "ui.cli", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_cli_ingest_dev_zero_is_one_line(tmp_path):
    proc = _cli(tmp_path, "ingest", "/dev/zero", "--profile", "tiny")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "random-weight" not in line]
    assert lines == ["rejected: zero: is a character device, not an image file"], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout.strip() == ""


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
@pytest.mark.parametrize("command", [["verify", "/dev/zero"], ["screen", "--image", "/dev/zero"],
                                     ["seal", "/dev/zero", "out.png"]])
def test_cli_file_commands_refuse_devices_in_one_line(tmp_path, command):
    proc = _cli(tmp_path, *command, "--profile", "tiny")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "random-weight" not in line]
    assert lines == [f"atelier {command[0]}: /dev/zero: is a character device, not an image file"], proc.stderr
