"""The insightface backend for real, offline: a tiny model pack built here, loaded by FaceAnalysis.

The pack has buffalo_l's layout and the graph signatures insightface's model zoo routes by
(`insightface.model_zoo.model_zoo.ModelRouter`): a SCRFD detector (one NCHW float input of any
size; 9 outputs = scores, box distances and 5 keypoints for strides 8, 16, 32, two anchors a
location) and an ArcFace recognition model (1x3x112x112 in, one 512-d embedding out).

- The detector is hand-set, not trained: it answers to a 32x32 bright square in its 640x640 input
  (a box filter of the channel mean at stride 8, a sigmoid, and a local-maximum mask so one anchor
  per square fires), with a fixed 48-px box and five keypoints in the ArcFace template's layout.
  So detection, NMS, the keypoint alignment and the crop all really run and return boxes where
  the squares are.
- The recognition model has random weights (zero-mean filters, tanh): the same crop gives the same
  embedding, different crops different ones. Its scores mean nothing; the tests assert shapes,
  normalisation, order, pairing and what follows from identical or moved content, never a score
  of two different patterns against a threshold.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx  # the `insightface` extra (in `dev`): these tests run wherever the test tools are installed
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from tools.errors import ModelUnavailableError
from tools.identity import FaceAnalyzer, describe_checks
from tools.settings import IdentitySettings

pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")  # insightface's face_align

PACK = "buffalo_l"  # the profiles' default name; the files are ours
FACE = 32  # side of a detectable square in the detector's 640x640 input (the box filter's kernel)
BOX_HALF = 24  # the detector's box: 48 px around the square's centre
OPSET = [helper.make_opsetid("", 13)]
# ArcFace's 112x112 alignment template (insightface.utils.face_align.arcface_dst)
ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


def _const(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"Const_{name}",
                            value=numpy_helper.from_array(np.asarray(value), name))


def _detector() -> onnx.ModelProto:
    nodes = [
        _const("zero", np.float32(0.0)),
        _const("ten", np.float32(10.0)),
        _const("col", np.array([-1, 1], dtype=np.int64)),
        _const("box", np.full((1, 8), BOX_HALF / 8.0, dtype=np.float32)),  # 2 anchors x 4 distances
        _const("shape4", np.array([-1, 4], dtype=np.int64)),
        _const("shape10", np.array([-1, 10], dtype=np.int64)),
        # five keypoints, relative to the anchor in strides, laid out like the template on a FACE square
        _const("kps", np.tile(((ARCFACE_DST - 56.0) * FACE / 112.0 / 8.0).reshape(1, 10), (1, 2))),
        helper.make_node("ReduceMean", ["input.1"], ["gray"], name="ReduceMean_0", axes=[1], keepdims=1),
    ]
    outputs = {"score": [], "bbox": [], "kps": []}
    for stride in (8, 16, 32):
        s = str(stride)
        if stride == 8:
            # window [8i-16, 8i+16) around each anchor centre (8i, 8j); H/8 x W/8 values
            nodes += [
                helper.make_node("AveragePool", ["gray"], ["pool8"], name="Pool_8", kernel_shape=[FACE, FACE],
                                 strides=[8, 8], pads=[FACE // 2, FACE // 2, 8, 8]),
                helper.make_node("MaxPool", ["pool8"], ["peak8"], name="Peak_8", kernel_shape=[3, 3],
                                 strides=[1, 1], pads=[1, 1, 1, 1]),
                helper.make_node("Equal", ["pool8", "peak8"], ["is_peak8"], name="Equal_8"),
                helper.make_node("Cast", ["is_peak8"], ["peak_mask8"], name="Cast_8", to=TensorProto.FLOAT),
                helper.make_node("Mul", ["pool8", "ten"], ["logit8"], name="Scale_8"),
                helper.make_node("Sigmoid", ["logit8"], ["prob8"], name="Sigmoid_8"),
                helper.make_node("Mul", ["prob8", "peak_mask8"], ["map8"], name="Mask_8"),
            ]
        else:  # coarser strides find nothing
            nodes += [
                helper.make_node("AveragePool", ["gray"], [f"pool{s}"], name=f"Pool_{s}",
                                 kernel_shape=[stride, stride], strides=[stride, stride]),
                helper.make_node("Mul", [f"pool{s}", "zero"], [f"map{s}"], name=f"Zero_{s}"),
            ]
        nodes += [
            helper.make_node("Reshape", [f"map{s}", "col"], [f"loc{s}"], name=f"Flat_{s}"),  # (H/s*W/s, 1)
            helper.make_node("Mul", [f"loc{s}", "zero"], [f"none{s}"], name=f"None_{s}"),
            # anchor 0 scores, anchor 1 never fires (SCRFD lists the two anchors of a location together)
            helper.make_node("Concat", [f"loc{s}", f"none{s}"], [f"pair{s}"], name=f"Pair_{s}", axis=1),
            helper.make_node("Reshape", [f"pair{s}", "col"], [f"score_{s}"], name=f"Score_{s}"),
            helper.make_node("Add", [f"none{s}", "box"], [f"box8_{s}"], name=f"Box_{s}"),
            helper.make_node("Reshape", [f"box8_{s}", "shape4"], [f"bbox_{s}"], name=f"BoxFlat_{s}"),
            helper.make_node("Add", [f"none{s}", "kps"], [f"kps20_{s}"], name=f"Kps_{s}"),
            helper.make_node("Reshape", [f"kps20_{s}", "shape10"], [f"kps_{s}"], name=f"KpsFlat_{s}"),
        ]
        for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)):
            outputs[kind].append(helper.make_tensor_value_info(f"{kind}_{s}", TensorProto.FLOAT, [f"n{s}", width]))
    graph = helper.make_graph(
        nodes, "tiny_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])],
        outputs["score"] + outputs["bbox"] + outputs["kps"],
    )
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="atelier-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _recognizer(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def conv(cout, cin, k):
        w = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
        w -= w.mean(axis=(1, 2, 3), keepdims=True)  # zero-mean: flat colour answers 0, texture does not
        return w * np.float32(np.sqrt(2.0 / (cin * k * k)))

    weights = {
        "w1": conv(16, 3, 7), "w2": conv(32, 16, 3),
        "fc": (rng.standard_normal((32 * 14 * 14, 512)) / np.sqrt(32 * 14 * 14)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input.1", "w1"], ["c1"], name="Conv_0", strides=[4, 4], pads=[3, 3, 3, 3]),
        helper.make_node("Tanh", ["c1"], ["a1"], name="Tanh_1"),
        helper.make_node("Conv", ["a1", "w2"], ["c2"], name="Conv_2", strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Tanh", ["c2"], ["a2"], name="Tanh_3"),
        helper.make_node("Flatten", ["a2"], ["flat"], name="Flatten_4", axis=1),
        helper.make_node("MatMul", ["flat", "fc"], ["683"], name="Gemm_5"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="atelier-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_tiny_pack(folder: Path) -> Path:
    """A pack in `folder` (FaceAnalysis reads `<root>/models/<name>/`), with buffalo_l's file names."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(_detector(), str(folder / "det_10g.onnx"))
    onnx.save(_recognizer(), str(folder / "w600k_r50.onnx"))
    return folder


# -- pictures: textured bright squares ("faces") on a dark ground ----------------------------------

def _pattern(identity: int, side: int = FACE) -> np.ndarray:
    """A square's texture, one per identity: bright (so the detector fires) and distinct."""
    rng = np.random.default_rng(100 + identity)
    cells = rng.integers(150, 256, size=(4, 4, 3)).astype(np.uint8)
    return np.kron(cells, np.ones((side // 4, side // 4, 1), dtype=np.uint8))


def _picture(faces: list[tuple[int, int, int]], size=(640, 480)) -> Image.Image:
    """`faces`: (identity, left, top) of each square, in pixels (a 640-wide picture is what the
    detector sees, unscaled)."""
    canvas = np.full((size[1], size[0], 3), 12, dtype=np.uint8)
    for identity, left, top in faces:
        canvas[top:top + FACE, left:left + FACE] = _pattern(identity)
    return Image.fromarray(canvas)


# square positions on the 8-px grid of the detector's input (a 640-wide picture is seen at scale 1)
GROUP = [(2, 400, 96), (0, 96, 200), (1, 248, 304)]  # identities 0, 1, 2 from left to right


@pytest.fixture(scope="module")
def pack_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("insightface-root")
    build_tiny_pack(root / "models" / PACK)
    return root


@pytest.fixture(scope="module")
def analyzer(pack_root) -> FaceAnalyzer:
    return FaceAnalyzer(IdentitySettings(backend="insightface", insightface_root=str(pack_root)))


@pytest.fixture(scope="module")
def group() -> Image.Image:
    return _picture(GROUP)


def test_tiny_pack_loads_through_face_analysis_as_detector_and_arcface(analyzer, pack_root):
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.scrfd import SCRFD

    analyzer.faces(Image.new("RGB", (64, 64)))  # builds the backend
    app = analyzer._backend.app
    assert set(app.models) == {"detection", "recognition"}
    det, rec = app.models["detection"], app.models["recognition"]
    assert isinstance(det, SCRFD) and det.use_kps and det.fmc == 3 and det._num_anchors == 2
    assert isinstance(rec, ArcFaceONNX) and rec.input_size == (112, 112) and rec.output_shape[-1] == 512
    assert (rec.input_mean, rec.input_std) == (127.5, 127.5)
    assert Path(app.model_dir) == pack_root / "models" / PACK
    assert analyzer.backend_name == "insightface" and analyzer.fallback_note is None
    # the profile's threshold for this backend (cosine distance), not dlib's L2 one by accident
    assert analyzer.max_distance == IdentitySettings().thresholds["insightface"]


def test_faces_come_left_to_right_with_int_boxes_and_unit_embeddings(analyzer, group):
    faces = analyzer.faces(group)
    assert len(faces) == 3
    for face, (_, left, top) in zip(faces, sorted(GROUP, key=lambda g: g[1])):
        assert isinstance(face.box, tuple) and len(face.box) == 4 and all(type(v) is int for v in face.box)
        l, t, r, b = face.box
        assert 0 <= l < r <= group.width and 0 <= t < b <= group.height  # (left, top, right, bottom)
        cx, cy = face.center
        assert abs(cx - (left + FACE / 2)) <= 4 and abs(cy - (top + FACE / 2)) <= 4
        assert (r - l, b - t) == (2 * BOX_HALF, 2 * BOX_HALF)
        assert face.embedding.shape == (512,) and face.embedding.dtype == np.float32
        assert abs(float(np.linalg.norm(face.embedding)) - 1.0) < 1e-5
        assert face.landmarks.shape == (5, 2) and 0.5 <= face.score <= 1.0
    assert [f.box[0] for f in faces] == sorted(f.box[0] for f in faces)
    # distinct patterns, distinct embeddings; a distance is a cosine distance in [0, 2]
    d = analyzer.distance(faces[0], faces[1])
    assert 0.0 < d <= 2.0 and d == pytest.approx(1.0 - float(faces[0].embedding @ faces[1].embedding), abs=1e-5)


def test_boxes_at_the_image_edge_stay_inside_it(analyzer):
    faces = analyzer.faces(_picture([(0, 0, 0)], size=(640, 480)))
    assert len(faces) == 1
    l, t, r, b = faces[0].box
    assert (l, t) == (0, 0) and r > 0 and b > 0


def test_same_people_moved_and_rescaled_pair_one_to_one_and_pass(analyzer, group):
    source = analyzer.faces(group)
    shifted = _picture([(i, x + 16, y - 8) for i, x, y in GROUP])
    # twice the resolution (as an edit may return it): the detector, at 640 wide, sees the same squares
    double = group.resize((group.width * 2, group.height * 2), Image.NEAREST)
    for variant in (shifted, double):
        result = analyzer.faces(variant)
        pairs = analyzer.match(source, result, group.size, variant.size)
        assert [j for _, j, _ in pairs] == [0, 1, 2]
        checks = analyzer.compare(group, variant, source_faces=source)
        assert [c.face for c in checks] == [0, 1, 2]
        assert all(c.same_person and c.distance is not None for c in checks), checks
        # shifted: the same pixels, the same embeddings; doubled: recognition crops the larger picture
        # (keypoints scaled back), so the crops are resampled a little differently
        assert max(c.distance for c in checks) < (1e-3 if variant is shifted else 0.1), checks
        assert [c.box for c in checks] == [f.box for f in source]  # boxes are the source's
        if variant is double:
            assert [f.box for f in result] == [tuple(2 * v for v in f.box) for f in source]
        assert describe_checks(checks) is None


def test_pairing_is_the_cheapest_one_to_one_assignment_and_verdicts_follow_the_threshold(analyzer, group):
    from tools.identity import MAX_POSITION_SHIFT, POSITION_WEIGHT

    source = analyzer.faces(group)
    # the left and middle people swap places; the right one stays
    (i0, x0, y0), (i1, x1, y1), third = sorted(GROUP, key=lambda g: g[1])
    swapped = _picture([(i1, x0, y0), (i0, x1, y1), third])
    result = analyzer.faces(swapped)
    assert len(result) == 3

    def shift(s, r):  # centre distance as a fraction of the diagonal, both in their own image
        (sx, sy), (rx, ry) = s.center, r.center
        return float(np.hypot(sx / group.width - rx / swapped.width, sy / group.height - ry / swapped.height)) / np.sqrt(2)

    def cost(perm):
        return sum(analyzer.distance(source[i], result[j]) + POSITION_WEIGHT * shift(source[i], result[j])
                   for i, j in enumerate(perm))

    best = min(itertools.permutations(range(3)), key=cost)
    assert all(shift(source[i], result[j]) <= MAX_POSITION_SHIFT for i, j in enumerate(best))
    pairs = analyzer.match(source, result, group.size, swapped.size)
    assert [j for _, j, _ in pairs] == list(best)
    for i, j, dist in pairs:
        assert dist == pytest.approx(analyzer.distance(source[i], result[j]), abs=1e-6)
    assert pairs[2][1] == 2 and pairs[2][2] < 1e-3  # who did not move is kept as is
    checks = analyzer.compare(group, swapped, source_faces=source)
    assert [c.face for c in checks] == [0, 1, 2]
    for c, (_, _, dist) in zip(checks, pairs):
        assert c.distance == round(dist, 4) and c.same_person == (dist < analyzer.max_distance)


def test_a_lost_face_and_a_face_moved_too_far_are_no_match(analyzer, group):
    source = analyzer.faces(group)
    covered = _picture([g for g in GROUP if g[0] != 2])  # the right person (identity 2) is gone
    checks = analyzer.compare(group, covered, source_faces=source)
    assert checks[2].distance is None and not checks[2].same_person
    assert all(c.same_person for c in checks[:2])
    assert "face 3 (the person on the right) is lost" in describe_checks(checks)
    # the same person across the picture: beyond MAX_POSITION_SHIFT, not a pairing
    here, there = _picture([(0, 40, 40)]), _picture([(0, 560, 400)])
    pairs = analyzer.match(analyzer.faces(here), analyzer.faces(there), here.size, there.size)
    assert pairs == [(0, None, None)]


def test_missing_pack_says_where_to_put_it(tmp_path):
    settings = IdentitySettings(backend="insightface", insightface_root=str(tmp_path), insightface_model="antelopev2")
    with pytest.raises(ModelUnavailableError) as err:
        FaceAnalyzer(settings).faces(Image.new("RGB", (64, 64)))
    message = str(err.value)
    assert "\n" not in message
    assert f"insightface model antelopev2 not found: put its files in {tmp_path / 'models' / 'antelopev2'}" in message
    assert "antelopev2.zip" in message
    assert not (tmp_path / "models").exists()  # nothing was downloaded or created


def test_broken_packs_are_one_line_errors(tmp_path):
    detector_only = tmp_path / "models" / "half"
    detector_only.mkdir(parents=True)
    onnx.save(_detector(), str(detector_only / "det_10g.onnx"))
    garbage = tmp_path / "models" / "garbage"
    garbage.mkdir(parents=True)
    (garbage / "w600k_r50.onnx").write_bytes(b"not an onnx model\n" * 4)
    for name, expected in (("half", "has no recognition model"), ("garbage", "could not be loaded")):
        settings = IdentitySettings(backend="insightface", insightface_root=str(tmp_path), insightface_model=name)
        with pytest.raises(ModelUnavailableError) as err:
            FaceAnalyzer(settings).faces(Image.new("RGB", (64, 64)))
        assert expected in str(err.value) and "\n" not in str(err.value)


def test_pack_unzipped_into_a_folder_of_its_own_name_is_found(tmp_path):
    build_tiny_pack(tmp_path / "models" / "antelopev2" / "antelopev2")  # as antelopev2.zip unzips
    analyzer = FaceAnalyzer(IdentitySettings(backend="insightface", insightface_root=str(tmp_path),
                                             insightface_model="antelopev2"))
    assert len(analyzer.faces(_picture(GROUP))) == 3


def test_fallback_to_dlib_is_used_and_said(tmp_path, face_photos):
    from agent.config import load_profile
    from tools.image_tools import ToolContext, run_tool
    from tools.store import ImageStore

    settings = IdentitySettings(backend="insightface", insightface_root=str(tmp_path), fallback="dlib",
                                thresholds={"insightface": 0.5}, max_attempts=1)
    analyzer = FaceAnalyzer(settings)
    portrait = Image.open(face_photos["portrait"]).convert("RGB")
    assert len(analyzer.faces(portrait)) == 1
    assert analyzer.backend_name == "dlib"
    assert analyzer.max_distance == settings.thresholds["dlib"] == 0.6  # dlib's L2 point, not the cosine one
    assert analyzer.fallback_note.startswith("faces checked with dlib, not insightface: insightface model buffalo_l")
    # every gated result says so
    profile = load_profile("tiny", environ={})
    store = ImageStore(tmp_path / "store")
    ref = store.ingest(face_photos["portrait"]).ref
    ctx = ToolContext(store=store, engine=profile.engine, identity=settings, analyzer=analyzer)
    out = run_tool(ctx, "edit_image", {"image": ref, "instruction": "add a hat"})
    assert "faces checked with dlib, not insightface" in out.result.note
    assert "face 1 (the person in the photo) is lost" in out.result.note
    # no fallback allowed: the one line, as an error
    with pytest.raises(ModelUnavailableError, match="insightface model buffalo_l not found"):
        FaceAnalyzer(IdentitySettings(backend="insightface", insightface_root=str(tmp_path))).faces(portrait)


def test_gpu_profiles_name_both_thresholds_and_fall_back_to_dlib():
    from agent.config import load_profile

    for name in ("qwen-image-2.1", "qwen-image-2511"):
        identity = load_profile(name, environ={}).identity
        assert identity.backend == "insightface" and identity.fallback == "dlib"
        assert identity.thresholds == {"dlib": 0.6, "insightface": 0.6}
        assert identity.max_distance == identity.thresholds["insightface"]
        assert FaceAnalyzer(identity).max_distance == 0.6
