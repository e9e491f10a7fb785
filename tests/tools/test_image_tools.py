"""Every tool through `run_tool` on the tiny profile: sizes, refs, parents, seeds, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from agent.config import load_profile
from tools.errors import CancelledError, ToolArgumentError, UnknownRefError
from tools.image_tools import StagedImage, ToolContext, relight_prompt, run_tool, viewpoint_prompt
from tools.schemas import ReframeImage, RelightImage
from tools.store import ImageStore

SESSION = "thread-tools"


@pytest.fixture(scope="module")
def profile():
    return load_profile("tiny")


@pytest.fixture()
def store(tmp_path):
    return ImageStore(tmp_path / "images")


@pytest.fixture()
def ctx(store, profile):
    return ToolContext(store=store, engine=profile.engine, identity=profile.identity, session=SESSION,
                       progress=None, profile="tiny")


@pytest.fixture()
def photo(store):
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return store.put(Image.fromarray(arr), session=SESSION, origin="upload").ref


def commit(ctx: ToolContext, staged: StagedImage):
    """What the agent does after screening and sealing: store the staged result as a version."""
    image, _ = ctx.store.load_staged(staged.staging_id)
    version = ctx.store.put(image, session=ctx.session, parent=staged.parent, origin=staged.origin,
                            tool_call=staged.tool_call, metadata=staged.metadata)
    ctx.store.discard_staged(staged.staging_id)
    return version


def test_generate_sizes_seeds_and_count(ctx):
    out = run_tool(ctx, "generate_image", {"prompt": "a red kite over a beach", "aspect_ratio": "16:9",
                                           "count": 3, "seed": 40})
    engine = ctx.get_engine()
    assert out.result.size == engine.native_size("16:9")
    assert out.result.size[0] > out.result.size[1]
    assert out.result.seeds == [40, 41, 42]
    assert len(out.staged) == 3
    versions = [commit(ctx, s) for s in out.staged]
    assert all(v.parent is None and v.origin == "generated" for v in versions)
    assert [v.metadata["seed"] for v in versions] == [40, 41, 42]
    assert all((v.width, v.height) == out.result.size for v in versions)
    assert versions[0].tool_call == {"name": "generate_image", "args": {
        "prompt": "a red kite over a beach", "aspect_ratio": "16:9", "count": 3, "seed": 40}}
    # the recorded seed reproduces the image
    again = run_tool(ctx, "generate_image", {"prompt": "a red kite over a beach", "aspect_ratio": "16:9",
                                             "seed": 41})
    a = np.asarray(ctx.store.load_staged(again.staged[0].staging_id)[0], dtype=float)
    b = np.asarray(ctx.store.open(versions[1].ref), dtype=float)
    assert np.abs(a - b).max() <= 2


def test_generate_without_seed_records_the_one_it_drew(ctx):
    out = run_tool(ctx, "generate_image", {"prompt": "a cat"})
    assert len(out.result.seeds) == 1 and out.staged[0].metadata["seed"] == out.result.seeds[0]
    assert out.staged[0].tool_call["args"]["seed"] == out.result.seeds[0]


def test_edit_with_references_stages_an_edited_child(ctx, photo, store):
    ref = store.put(Image.new("RGB", (40, 40), (200, 30, 30)), session=SESSION).ref
    out = run_tool(ctx, "edit_image", {"image": photo, "instruction": "give her a red scarf",
                                       "references": [ref], "region": "the neck"})
    (staged,) = out.staged
    assert staged.parent == photo and staged.origin == "edited"
    assert staged.source_refs == [photo, ref]
    assert out.result.size == ctx.get_engine().edit_size(64, 48)
    assert "the neck" in staged.metadata["instruction"] and "picture 2" in staged.metadata["instruction"]
    version = commit(ctx, staged)
    assert store.lineage(version.ref)[0].ref == photo
    assert version.ref in [v.ref for v in store.children(photo, SESSION)]
    assert out.result.attempts == 1 and out.result.faces == []  # no faces in a noise image
    assert set(out.result.drift) >= {"global_shift_px", "mean_change"}


def test_relight_prompt_comes_from_the_template(ctx, photo):
    args = RelightImage(image=photo, direction="left", color_temperature=3000, intensity=1.6, softness="soft",
                        description="golden hour sun")
    prompt = relight_prompt(args)
    for words in ("golden hour sun", "left side", "warm tungsten", "3000 K", "very bright", "soft, diffused"):
        assert words in prompt
    out = run_tool(ctx, "relight_image", args)
    assert out.staged[0].parent == photo and out.staged[0].metadata["instruction"] == prompt
    assert out.result.size == ctx.get_engine().edit_size(64, 48)


def test_reframe_zoom_out_outpaints_around_the_untouched_original(ctx, photo, store):
    out = run_tool(ctx, "reframe_image", {"image": photo, "aspect_ratio": "16:9", "zoom": 0.6})
    (staged,) = out.staged
    result, meta = store.load_staged(staged.staging_id)
    engine = ctx.get_engine()
    assert result.size == engine.edit_size(*engine.native_size("16:9")) == out.result.size
    assert result.width > result.height
    left, top, right, bottom = meta["content_box"]
    assert (right - left) < result.width * 0.7  # zoomed out: the original fills ~60% of the canvas
    # inside the mask the pixels are the (resized) original, exactly
    expected = store.open(photo).resize((right - left, bottom - top), Image.LANCZOS)
    assert np.array_equal(np.asarray(result.crop((left, top, right, bottom))), np.asarray(expected))
    assert "outside_change" in out.result.drift


def test_reframe_zoom_in_and_camera_moves(ctx, photo, store):
    zoomed = run_tool(ctx, "reframe_image", {"image": photo, "zoom": 2.0})
    assert zoomed.staged[0].metadata["crop_box"] == [16, 12, 48, 36]
    moved = run_tool(ctx, "reframe_image", {"image": photo, "camera_azimuth": 45, "camera_elevation": 30,
                                            "shot": "close-up"})
    instruction = moved.staged[0].metadata["instruction"]
    assert "45 degrees to the left" in instruction and "30 degrees above" in instruction
    assert "close-up" in instruction
    assert viewpoint_prompt(ReframeImage(image=photo, camera_azimuth=-90)).startswith(
        "Rotate the camera 90 degrees to the right")
    with pytest.raises(ToolArgumentError):
        run_tool(ctx, "reframe_image", {"image": photo})


def test_adjust_is_exact_and_staged_as_a_child(ctx, photo, store):
    out = run_tool(ctx, "adjust_image", {"image": photo, "crop": [0.25, 0.25, 0.75, 0.75]})
    image, _ = store.load_staged(out.staged[0].staging_id)
    assert np.array_equal(np.asarray(image), np.asarray(store.open(photo))[12:36, 16:48])
    assert out.result.size == (32, 24) and out.staged[0].parent == photo
    with pytest.raises(ToolArgumentError):
        run_tool(ctx, "adjust_image", {"image": photo})
    # settings at their identity make no new version that is the same picture
    with pytest.raises(ToolArgumentError, match="change nothing"):
        run_tool(ctx, "adjust_image", {"image": photo, "white_balance_k": 6500, "exposure_ev": 0})


def test_revert_sets_current_and_stages_nothing(ctx, photo, store):
    out = run_tool(ctx, "revert", {"image": photo})
    assert out.staged == [] and out.result.current == photo and out.result.size == (64, 48)
    assert "current: " + photo in out.result.for_model()


@pytest.mark.parametrize("name,args", [
    ("edit_image", {"image": "img_00000000deadbeef", "instruction": "x"}),
    ("revert", {"image": "img_0123456789ab"}),
    ("adjust_image", {"image": "img_0123456789ab", "exposure_ev": 1}),
])
def test_unknown_refs_are_typed_errors(ctx, name, args):
    with pytest.raises(UnknownRefError):
        run_tool(ctx, name, args)


@pytest.mark.parametrize("name,args,where", [
    ("generate_image", {"prompt": "x", "count": 9}, "count"),
    ("generate_image", {"prompt": "x", "aspect_ratio": "5:1"}, "aspect_ratio"),
    ("relight_image", {"image": "img_0123456789ab", "color_temperature": 90000}, "color_temperature"),
    ("reframe_image", {"image": "img_0123456789ab", "zoom": 9}, "zoom"),
    ("adjust_image", {"image": "img_0123456789ab", "exposure_ev": 7}, "exposure_ev"),
    ("edit_image", {"image": "not-a-ref", "instruction": "x"}, "image"),
    ("paint_image", {}, "unknown tool"),
])
def test_out_of_range_args_are_tool_argument_errors(ctx, name, args, where):
    with pytest.raises(ToolArgumentError, match=where):
        run_tool(ctx, name, args)


def test_progress_streams_steps_and_cancel_stops(ctx, photo):
    seen = []
    ctx.progress = lambda i, n: seen.append((i, n))
    run_tool(ctx, "edit_image", {"image": photo, "instruction": "snow"})
    assert seen == [(1, ctx.engine.steps), (2, ctx.engine.steps)]

    def stop(i, n):
        raise CancelledError("stopped by the user")

    ctx.progress = stop
    with pytest.raises(CancelledError):
        run_tool(ctx, "generate_image", {"prompt": "x"})


def test_drift_measures_a_global_shift_and_change_outside_the_mask():
    from PIL import ImageFilter

    from tools.drift import measure

    rng = np.random.default_rng(1)
    scene = Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(2))
    shifted = Image.new("RGB", scene.size)
    shifted.paste(scene, (6, -4))
    figures = measure(scene, shifted)
    assert abs(figures["shift_x_px"] - 6) < 0.5 and abs(figures["shift_y_px"] + 4) < 0.5
    assert measure(scene, scene)["global_shift_px"] == 0
    keep = np.zeros((120, 160), dtype=bool)
    keep[:, :80] = True
    half = np.asarray(scene).copy()
    half[:, 80:] = 0  # change only outside the kept half
    assert measure(scene, Image.fromarray(half), keep)["outside_change"] == 0
