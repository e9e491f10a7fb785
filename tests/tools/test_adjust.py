"""adjust_image is exact: identities are identities, crops are slices, tonal changes go the right way."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tools.adjust import adjust, crop_box, rotate, white_balance_gains
from tools.errors import ToolArgumentError


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    arr[:, :8] = 128  # a neutral grey strip
    return Image.fromarray(arr)


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int32)


def test_identity_settings_return_the_same_pixels(photo):
    same = adjust(photo, exposure_ev=0, white_balance_k=6500, contrast=1, saturation=1, rotate_deg=0)
    assert np.array_equal(px(same), px(photo))
    assert np.array_equal(px(adjust(photo, rotate_deg=360)), px(photo))


def test_crop_equals_the_array_slice(photo):
    out = adjust(photo, crop=(0.25, 0.5, 0.75, 1.0))
    left, top, right, bottom = crop_box(photo.size, (0.25, 0.5, 0.75, 1.0))
    assert (left, top, right, bottom) == (16, 24, 48, 48)
    assert np.array_equal(px(out), px(photo)[top:bottom, left:right])


def test_crop_to_nothing_is_a_clear_error(photo):
    with pytest.raises(ToolArgumentError, match="no pixels"):
        adjust(photo, crop=(0.5, 0.5, 0.505, 0.505))


def test_exposure_doubles_linear_light():
    grey = Image.new("RGB", (4, 4), (100, 100, 100))
    brighter = px(adjust(grey, exposure_ev=1))[0, 0, 0]
    lin = ((100 / 255 + 0.055) / 1.055) ** 2.4 * 2
    expected = round((1.055 * lin ** (1 / 2.4) - 0.055) * 255)
    assert brighter == expected
    assert px(adjust(grey, exposure_ev=-1))[0, 0, 0] < 100


def test_white_balance_warmer_below_neutral_and_cooler_above():
    grey = Image.new("RGB", (4, 4), (128, 128, 128))
    warm = px(adjust(grey, white_balance_k=3000))[0, 0]
    cool = px(adjust(grey, white_balance_k=10000))[0, 0]
    assert warm[0] > 128 > warm[2]
    assert cool[2] > 128 > cool[0]
    np.testing.assert_allclose(white_balance_gains(6500), [1, 1, 1])


def test_contrast_and_saturation(photo):
    grey = Image.new("RGB", (2, 2), (128, 128, 128))
    assert np.array_equal(px(adjust(grey, saturation=0.0)), px(grey))  # grey stays grey
    flat = px(adjust(photo, saturation=0.0))
    assert np.abs(flat[..., 0] - flat[..., 1]).max() <= 1 and np.abs(flat[..., 1] - flat[..., 2]).max() <= 1
    low = px(adjust(photo, contrast=0.5))
    assert low.std() < px(photo).std()
    assert np.abs(low - 128).max() <= 64


def test_rotation_quarter_turns_are_exact_and_small_angles_straighten(photo):
    assert np.array_equal(px(rotate(photo, 90)), np.rot90(px(photo)))
    assert np.array_equal(px(rotate(photo, -180)), np.rot90(px(photo), 2))
    tilted = adjust(photo, rotate_deg=5)
    assert tilted.width < photo.width and tilted.height < photo.height
    # no empty (black) corners left after straightening a bright image
    white = Image.new("RGB", (64, 48), (250, 250, 250))
    assert px(adjust(white, rotate_deg=7)).min() > 200
    assert adjust(photo, rotate_deg=5).tobytes() == adjust(photo, rotate_deg=5).tobytes()  # deterministic
