"""Provenance: watermark robustness and false positives, C2PA valid/trusted/invalid, metadata."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from tools.provenance import Sealer, WatermarkRegistry, detect_watermark, verify_bytes
from tools.provenance import watermark as wm
from tools.provenance.evals import ATTACKS, synthetic_image
from tools.settings import ProvenanceSettings


@pytest.fixture()
def key_dir(tmp_path):
    return tmp_path / "keys"


@pytest.fixture()
def sealer(key_dir):
    return Sealer(ProvenanceSettings(), key_dir)


def _photo(seed=0, size=256) -> Image.Image:
    return synthetic_image(3, size, np.random.default_rng(seed))  # smooth texture


def _chunks(data: bytes):
    pos = 8
    while pos < len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        yield data[pos + 4:pos + 8], data[pos:pos + 12 + n]
        pos += 12 + n


def _tamper_pixels(sealed: bytes) -> bytes:
    """Change one pixel but keep every other chunk (the C2PA manifest included)."""
    image = Image.open(io.BytesIO(sealed)).convert("RGB")
    image.putpixel((0, 0), tuple(255 - c for c in image.getpixel((0, 0))))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    idat = b"".join(c for t, c in _chunks(buf.getvalue()) if t == b"IDAT")
    out, done = [sealed[:8]], False
    for t, c in _chunks(sealed):
        if t == b"IDAT":
            if not done:
                out.append(idat)
                done = True
        else:
            out.append(c)
    return b"".join(out)


# -- watermark -------------------------------------------------------------------------------


def test_ids_round_trip_through_bits():
    assert wm.id_from_bits(wm.bits_from_id("0123456789ab")) == "0123456789ab"


def test_dct_keeps_singular_values_so_skipping_it_is_exact():
    rng = np.random.default_rng(0)
    blocks = rng.normal(100, 30, (50, wm.BLOCK, wm.BLOCK))
    d = wm._dct_matrix()
    s_dct = np.linalg.svd(d @ blocks @ d.T, compute_uv=False)[:, 0]
    s0, _, _ = wm._top_singular(blocks)
    np.testing.assert_allclose(s0, s_dct, rtol=1e-6)


def test_threshold_keeps_false_positive_rate_under_1e_6():
    for registered in (1, 50, 10_000):
        k = wm.threshold(registered)
        assert wm.hypotheses() * registered * wm.binomial_tail(48, k) <= 1e-6
        assert wm.hypotheses() * registered * wm.binomial_tail(48, k - 1) > 1e-6  # smallest such k
        k_straight, k_search = wm.thresholds(registered)
        bound = registered * (wm.binomial_tail(48, k_straight) + (wm.hypotheses() - 1) * wm.binomial_tail(48, k_search))
        assert bound <= 1e-6
        assert k_straight <= k_search


def test_embedding_is_invisible_and_read_back_exactly():
    image = _photo(1, 512)
    marked = wm.embed(image, "a1b2c3d4e5f6")
    assert wm.psnr(image, marked) >= 38
    assert wm.id_from_bits(wm.read(np.asarray(marked)).bits()) == "a1b2c3d4e5f6"


@pytest.mark.parametrize("attack", ["jpeg75", "resize0.5", "crop90", "shift8", "rotate2", "flip", "brightness+20", "blur", "noise"])
def test_watermark_survives_attacks(tmp_path, attack):
    registry = WatermarkRegistry(tmp_path / "wm.sqlite")
    registry.add("5e1f00d2c0de")
    for other in range(20):  # a registry with other ids too
        registry.add(f"{other:012x}")
    marked = wm.embed(_photo(2, 512), "5e1f00d2c0de")
    found = detect_watermark(ATTACKS[attack](marked), registry)
    assert found["detected"] and found["id"] == "5e1f00d2c0de", found


def test_clean_images_are_not_detected(tmp_path):
    registry = WatermarkRegistry(tmp_path / "wm.sqlite")
    rng = np.random.default_rng(5)
    for i in range(30):
        registry.add(f"{int(rng.integers(0, 2**48)):012x}")
    for i in range(6):
        found = detect_watermark(synthetic_image(i, 192, rng), registry)
        assert not found["detected"] and found["id"] is None


# -- sealing and C2PA -------------------------------------------------------------------------


def test_sealed_image_is_trusted_with_the_dev_ca_and_valid_without(sealer, key_dir, tmp_path):
    sealed = sealer.seal(_photo(), action="created", source_type="trainedAlgorithmicMedia")
    assert (key_dir / "ca.pem").exists() and (key_dir / "signer.key").exists()
    report = verify_bytes(sealed.data, key_dir=key_dir)
    assert report["watermark"]["detected"] and report["watermark"]["id"] == sealed.watermark_id
    assert report["c2pa"]["state"] == "Trusted"
    assert report["c2pa"]["actions"] == ["c2pa.created"]
    assert report["c2pa"]["digital_source_types"] == ["trainedAlgorithmicMedia"]
    assert report["c2pa"]["soft_binding"] == sealed.watermark_id
    assert report["metadata"]["ai_generated"] is True
    # no trust anchor configured: signature and hashes still check out
    elsewhere = verify_bytes(sealed.data, key_dir=tmp_path / "other-keys")
    assert elsewhere["c2pa"]["state"] == "Valid"


def test_tampered_pixels_make_the_manifest_invalid(sealer, key_dir):
    sealed = sealer.seal(_photo())
    report = verify_bytes(_tamper_pixels(sealed.data), key_dir=key_dir)
    assert report["c2pa"]["state"] == "Invalid"
    assert "assertion.dataHash.mismatch" in report["c2pa"]["failures"]


def test_edit_records_parent_as_ingredient(sealer, key_dir):
    parent = sealer.seal(_photo(3))
    child = sealer.seal(Image.open(io.BytesIO(parent.data)), action="edited",
                        source_type="compositeWithTrainedAlgorithmicMedia", parent=parent.data,
                        tool_call={"name": "edit_image", "args": {"instruction": "add a hat"}})
    c2pa = verify_bytes(child.data, key_dir=key_dir)["c2pa"]
    assert c2pa["state"] == "Trusted"
    assert c2pa["actions"] == ["c2pa.opened", "c2pa.edited"]
    assert c2pa["digital_source_types"] == ["compositeWithTrainedAlgorithmicMedia"]
    assert c2pa["ingredients"] == 1
    assert child.watermark_id != parent.watermark_id


def test_unsealed_image_reports_absent(key_dir):
    buf = io.BytesIO()
    _photo(4).save(buf, "PNG")
    report = verify_bytes(buf.getvalue(), key_dir=key_dir)
    assert report["c2pa"]["state"] == "absent"
    assert report["watermark"]["detected"] is False
    assert report["metadata"]["ai_generated"] is False


def test_watermark_and_c2pa_can_be_switched_off(key_dir):
    sealed = Sealer(ProvenanceSettings(watermark=False, c2pa=False), key_dir).seal(_photo())
    assert sealed.watermark_id is None
    assert verify_bytes(sealed.data, key_dir=key_dir)["c2pa"]["state"] == "absent"


@pytest.mark.slow
def test_optional_rivagan_layer_carries_the_id(key_dir):
    pytest.importorskip("onnxruntime")
    # the learned layer sits under the chroma dwtDctSvd mark it was paired with; under the default
    # lattice (luminance, 38.3 dB) its 32 bits did not all read back in 1 run of 4 at 512 px
    sealer = Sealer(ProvenanceSettings(watermark_rivagan=True, watermark_scheme="dwtdctsvd"), key_dir)
    sealed = sealer.seal(_photo(6, 512))  # RivaGAN needs room: at 256 px it keeps only 29-31 of 32 bits
    report = verify_bytes(sealed.data, key_dir=key_dir, rivagan=True)
    assert report["watermark"]["detected"]
    assert report["watermark"]["rivagan"]["detected"]
    assert report["watermark"]["rivagan"]["id"] == sealed.watermark_id


def test_hypotheses_count_matches_what_the_search_tries():
    """The union bound counts exactly the readings `candidates` yields."""
    assert sum(1 for _ in wm.candidates(np.zeros((128, 128, 3), np.float32))) == wm.hypotheses()


def test_exact_adjustments_record_their_own_actions_and_no_ai_label_on_a_photo(tmp_path):
    """issue 16 item 5: an adjustment of a real photo is `c2pa.color_adjustments` / `c2pa.cropped`,
    with no digital source type and no "AI-generated" label; of a generated image it stays labelled."""
    from agent import Atelier
    from agent.config import load_profile

    app = Atelier(profile=load_profile("tiny", {"store": {"root": str(tmp_path)}}))
    session = app.session("t-exact")
    photo = Image.fromarray((np.random.default_rng(1).random((96, 128, 3)) * 255).astype(np.uint8))
    buf = io.BytesIO()
    photo.save(buf, format="PNG")
    upload = session.upload(buf.getvalue(), filename="photo.png")
    adjusted = session.call_tool("adjust_image", {"image": upload.ref, "exposure_ev": 0.5, "crop": [0.1, 0.1, 0.9, 0.9]})
    ref = adjusted.images[0].ref
    report = session.verify(ref)
    assert report["c2pa"]["actions"] == ["c2pa.opened", "c2pa.color_adjustments", "c2pa.cropped"]
    assert report["c2pa"]["digital_source_types"] == []
    assert report["metadata"]["ai_generated"] is False
    assert app.store.get(ref).metadata["ai_generated"] is False

    generated = session.call_tool("generate_image", {"prompt": "a lighthouse"}).images[0].ref
    rotated = session.call_tool("adjust_image", {"image": generated, "rotate_deg": 90}).images[0].ref
    report = session.verify(rotated)
    assert report["c2pa"]["actions"] == ["c2pa.opened", "c2pa.orientation"]
    assert report["metadata"]["ai_generated"] is True
    assert report["c2pa"]["soft_binding"] == report["watermark"]["id"]

    # an uploaded file that says a model made it stays AI-generated when adjusted
    again = session.upload(session.image_bytes(generated), filename="from-elsewhere.png")
    assert app.store.get(again.ref).metadata.get("ai_generated") is True
    brighter = session.call_tool("adjust_image", {"image": again.ref, "exposure_ev": 1}).images[0].ref
    assert session.verify(brighter)["metadata"]["ai_generated"] is True
    app.close()


def test_an_upload_with_credentials_keeps_them_as_the_edits_ingredient(tmp_path):
    """issue 16 item 5: a file that arrives with content credentials is stored as it came, so the
    manifest of an edit of it carries the upload's own manifest in its ingredient."""
    from agent import Atelier
    from agent.config import load_profile

    maker = Atelier(profile=load_profile("tiny", {"store": {"root": str(tmp_path / "a")}}))
    made = maker.session("t-a").call_tool("generate_image", {"prompt": "a paper boat"}).images[0]
    sealed = maker.store.read_bytes(made.ref)
    assert read_credentials_of(sealed)["manifests"] == 1

    other = Atelier(profile=load_profile("tiny", {"store": {"root": str(tmp_path / "b")}}))
    session = other.session("t-b")
    upload = session.upload(sealed, filename="boat.png")
    assert other.store.read_bytes(upload.ref) == sealed and upload.metadata.get("credentials") is True
    edited = session.call_tool("adjust_image", {"image": upload.ref, "saturation": 1.3}).images[0]
    report = read_credentials_of(other.store.read_bytes(edited.ref))
    assert report["ingredients"] == 1 and report["manifests"] == 2  # the upload's manifest came along
    assert report["actions"] == ["c2pa.opened", "c2pa.color_adjustments"]

    # a plain file is stored re-encoded, as before, and its edit has one manifest
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 140, 200)).save(buf, format="PNG")
    plain = session.upload(buf.getvalue(), filename="plain.png")
    assert "credentials" not in plain.metadata
    maker.close()
    other.close()


def read_credentials_of(data: bytes) -> dict:
    from tools.provenance.credentials import read_credentials

    return read_credentials(data)
