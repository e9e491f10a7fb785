"""Image store: round trip, history tree, upload validation, confinement to the root."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.errors import BadImageError, UnknownRefError
from tools.settings import LimitSettings
from tools.store import ImageStore


def _png(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _gradient(w=48, h=32) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)
    y = np.linspace(0, 255, h, dtype=np.uint8)
    arr = np.stack([np.tile(x, (h, 1)), np.tile(y[:, None], (1, w)), np.full((h, w), 90, np.uint8)], -1)
    return Image.fromarray(arr, "RGB")


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def store(tmp_path):
    return ImageStore(tmp_path / "images")


def test_round_trip_keeps_pixels_and_size(store):
    image = _gradient()
    version = store.ingest(_png(image), filename="g.png", session="s1")
    assert version.ref.startswith("img_") and version.origin == "upload"
    assert (version.width, version.height) == (48, 32)
    assert np.array_equal(np.asarray(store.open(version.ref)), np.asarray(image))
    assert store.get(version.ref) == version
    assert Path(store.local_path(version.ref)).read_bytes() == store.read_bytes(version.ref)


def test_same_content_is_the_same_version(store):
    a = store.ingest(_png(_gradient()), session="s1")
    b = store.ingest(_png(_gradient()), session="s1")
    assert a.ref == b.ref
    assert [v.ref for v in store.history("s1")] == [a.ref]


def test_history_is_a_tree_per_session(store):
    root = store.ingest(_png(_gradient()), session="s1")
    red = store.put(Image.new("RGB", (16, 16), "red"), session="s1", parent=root.ref, origin="edited",
                    tool_call={"name": "edit_image", "args": {"image": root.ref, "instruction": "red"}})
    blue = store.put(Image.new("RGB", (16, 16), "blue"), session="s1", parent=root.ref, origin="edited")
    green = store.put(Image.new("RGB", (16, 16), "green"), session="s1", parent=red.ref, origin="edited")
    other = store.put(Image.new("RGB", (16, 16), "white"), session="s2")

    assert [v.ref for v in store.history("s1")] == [root.ref, red.ref, blue.ref, green.ref]
    assert [v.ref for v in store.history("s2")] == [other.ref]
    assert {v.ref for v in store.children(root.ref, "s1")} == {red.ref, blue.ref}  # a branch
    assert [v.ref for v in store.lineage(green.ref)] == [root.ref, red.ref, green.ref]
    assert store.get(red.ref).tool_call["name"] == "edit_image"


def test_put_keeps_encoded_bytes_verbatim(store):
    data = _png(_gradient(), pnginfo=None)
    version = store.put(data, session="s")
    assert store.read_bytes(version.ref) == data


def test_put_with_unknown_parent_is_refused(store):
    with pytest.raises(UnknownRefError):
        store.put(_gradient(), parent="img_000000000000")


def test_staging_round_trip_and_discard(store):
    sid = store.stage(_gradient(), {"seed": 7})
    image, meta = store.load_staged(sid)
    assert image.size == (48, 32) and meta == {"seed": 7}
    store.discard_staged(sid)
    with pytest.raises(UnknownRefError):
        store.load_staged(sid)
    with pytest.raises(UnknownRefError):
        store.load_staged("../../etc/passwd")


@pytest.mark.parametrize("ref", ["img_zz", "../../etc/passwd", "img_../../x", "", "IMG_ABCDEF12", "img_1234567"])
def test_malformed_refs_are_unknown(store, ref):
    with pytest.raises(UnknownRefError):
        store.get(ref)


def test_unknown_ref_message_names_it(store):
    with pytest.raises(UnknownRefError, match="img_0123456789ab"):
        store.open("img_0123456789ab")


def test_nothing_is_written_outside_the_root(tmp_path):
    root = tmp_path / "root"
    store = ImageStore(root)
    before = _snapshot(tmp_path)
    store.ingest(_png(_gradient()), filename="../../../escape.png", session="../../../../tmp/evil")
    after = _snapshot(tmp_path)
    assert all(p.startswith("root/") for p in after - before)
    assert not (tmp_path / "escape.png").exists()
    version = store.history("../../../../tmp/evil")[0]
    assert version.filename == "escape.png"


# --- normalisation: accepted inputs become upright 8-bit RGB ---------------------------------

def test_exif_orientation_is_applied(store):
    image = _gradient(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    version = store.ingest(_encode(image, "JPEG", exif=exif, quality=95))
    assert (version.width, version.height) == (20, 40)


def test_cmyk_jpeg_becomes_rgb(store):
    version = store.ingest(_encode(_gradient().convert("CMYK"), "JPEG"))
    assert store.open(version.ref).mode == "RGB"


def test_sixteen_bit_png_is_scaled_to_eight_bits(store):
    arr = (np.linspace(0, 65535, 32 * 32).reshape(32, 32)).astype(np.uint16)
    image = Image.frombytes("I;16", (32, 32), arr.tobytes())
    version = store.ingest(_png(image))
    out = np.asarray(store.open(version.ref))
    assert out.dtype == np.uint8 and out.shape == (32, 32, 3)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255


def test_palette_and_alpha_are_flattened(store):
    palette = _gradient().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    assert store.open(store.ingest(_png(palette)).ref).mode == "RGB"
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))  # fully transparent red
    out = np.asarray(store.open(store.ingest(_png(rgba)).ref))
    assert (out == 255).all()  # composited on white


def test_webp_is_accepted(store):
    version = store.ingest(_encode(_gradient(), "WEBP", lossless=True))
    assert version.format == "png" and store.open(version.ref).size == (48, 32)


# --- rejected uploads: one clear line, store unchanged -------------------------------------

def _bomb() -> bytes:
    return _png(Image.new("1", (20_000, 20_000)))  # 400 MP, a few KB compressed


BAD_UPLOADS = {
    "empty": (lambda: b"", "empty"),
    "text": (lambda: b"hello, I am not an image\n" * 10, "not an image"),
    "gif": (lambda: _encode(_gradient().convert("P"), "GIF"), "GIF images are not supported"),
    "bmp": (lambda: _encode(_gradient(), "BMP"), "BMP images are not supported"),
    "truncated_png": (lambda: _png(_gradient(256, 256))[:600], "truncated or corrupt"),
    "truncated_jpeg": (lambda: _encode(_gradient(256, 256), "JPEG")[:700], "truncated or corrupt"),
    "bomb": (_bomb, "20000×20000 px = 400 MP and its longest side is 20000 px; the limits are 50 MP and 12000 px"),
    "tiny": (lambda: _png(Image.new("RGB", (4, 4))), "too small"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_uploads_are_rejected_and_store_unchanged(tmp_path, case):
    make, message = BAD_UPLOADS[case]
    store = ImageStore(tmp_path / "images")
    store.ingest(_png(_gradient()), session="s")
    before = _snapshot(tmp_path)
    with pytest.raises(BadImageError) as err:
        store.ingest(make(), filename=f"{case}.bin", session="s")
    text = str(err.value)
    assert message in text and text.startswith(f"{case}.bin:") and "\n" not in text
    assert _snapshot(tmp_path) == before


def test_upload_byte_limit(tmp_path):
    store = ImageStore(tmp_path, LimitSettings(max_upload_bytes=1000))
    data = _png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))
    with pytest.raises(BadImageError, match="upload limit"):
        store.ingest(data)


def test_pixel_limit_is_configurable(tmp_path):
    store = ImageStore(tmp_path, LimitSettings(max_pixels=1000))
    with pytest.raises(BadImageError) as err:
        store.ingest(_png(_gradient(48, 32)), filename="small.png")
    assert str(err.value) == "small.png: 48×32 px = 1,536 pixels; the limit is 1,000 pixels"


@pytest.mark.parametrize("size, fmt, message", [
    ((12_000, 12_000), "PNG", "photo: 12000×12000 px = 144 MP; the limit is 50 MP"),  # PIL's bomb guard
    ((7072, 7072), "PNG", "photo: 7072×7072 px = 50.1 MP; the limit is 50 MP"),  # never "50 MP; limit 50 MP"
    ((8000, 7000), "JPEG", "photo: 8000×7000 px = 56 MP; the limit is 50 MP"),
    ((8000, 7000), "WEBP", "photo: the image is 56 MP; the limit is 50 MP"),  # PIL's WebP reader hides the size
    ((13_000, 16), "PNG", "photo: 13000×16 px; its longest side is 13000 px; the limit is 12000 px"),
])
def test_an_image_over_a_hard_limit_says_which_limit(store, size, fmt, message):
    data = _encode(Image.new("L" if fmt != "PNG" else "1", size), fmt)
    with pytest.raises(BadImageError) as err:
        store.ingest(data, filename="/tmp/x/photo")
    assert str(err.value) == message


@pytest.mark.parametrize("make, message", [
    (lambda: b"hello, I am not an image\n", "the uploaded file: not an image Atelier can read (use PNG, JPEG or WebP)"),
    (lambda: _png(Image.new("RGB", (4, 4))), "the uploaded file: 4x4 is too small (at least 8x8)"),
])
def test_an_upload_without_a_file_name_is_the_uploaded_file(store, make, message):
    with pytest.raises(BadImageError) as err:
        store.ingest(make())
    assert str(err.value) == message


def test_an_upload_is_named_by_the_file_name_given_not_its_path(store, tmp_path):
    copy = tmp_path / "62262bce-3b1f-4c55-9c0e-6f1a2b3c4d5e.png"  # a chat app's copy of an attachment
    copy.write_bytes(b"not an image at all")
    with pytest.raises(BadImageError) as err:
        store.ingest(copy, filename="holiday photo.png")
    assert str(err.value) == "holiday photo.png: not an image Atelier can read (use PNG, JPEG or WebP)"
    copy.write_bytes(_png(_gradient()))
    assert store.ingest(copy, filename="holiday photo.png").filename == "holiday photo.png"
    assert store.ingest(_png(_gradient(40, 30))).filename is None  # no made-up name is stored


def test_missing_file_is_a_clear_error(store, tmp_path):
    with pytest.raises(BadImageError, match="cannot read file"):
        store.ingest(tmp_path / "nope.png")


def test_fsspec_memory_store_round_trip():
    store = ImageStore("memory://atelier-test-store")
    version = store.ingest(_png(_gradient()), session="m")
    assert store.open(version.ref).size == (48, 32)
    assert os.path.exists(store.local_path(version.ref))
    assert [v.ref for v in store.history("m")] == [version.ref]
