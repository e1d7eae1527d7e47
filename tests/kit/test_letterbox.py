"""The one letterbox (detector and trainer): geometry worked out by hand, the inverse box mapping,
odd sizes, and the reduced-decode mapping to the source's pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from kit.letterbox import PAD_VALUE, Letterbox, letterbox


def test_centred_wide_image() -> None:
    # 128x64 into 64x64: scale 0.5 -> 64x32, 32 rows of padding split 16 above, 16 below.
    image = np.full((64, 128, 3), 200, np.uint8)
    canvas, box = letterbox(image, (64, 64), centered=True)
    assert box == Letterbox(scale=0.5, pad_x=0.0, pad_y=16.0, source_width=128, source_height=64)
    assert canvas.shape == (64, 64, 3) and canvas.dtype == np.uint8
    assert (canvas[:16] == PAD_VALUE).all() and (canvas[48:] == PAD_VALUE).all()
    assert (canvas[16:48] == 200).all()


def test_top_left_tall_image() -> None:
    # 30x60 (w x h) into 64x64: scale min(64/60, 64/30) = 1.0667 -> 32x64, padding all on the right.
    image = np.full((60, 30, 3), 7, np.uint8)
    canvas, box = letterbox(image, (64, 64), centered=False)
    assert box.scale == pytest.approx(64 / 60)
    assert (box.pad_x, box.pad_y) == (0.0, 0.0)
    assert (canvas[:, :32] == 7).all() and (canvas[:, 32:] == PAD_VALUE).all()


def test_odd_sizes_put_the_extra_pad_row_below_and_keep_bilinear_pixels() -> None:
    # 101x37 into 64x48 (w x h): scale min(48/37, 64/101) = 64/101 -> 64x23 (23.44 rounded);
    # 25 rows of padding: 12 above, 13 below.
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (37, 101, 3), dtype=np.uint8)
    canvas, box = letterbox(image, (48, 64))
    assert box == Letterbox(scale=64 / 101, pad_x=0.0, pad_y=12.0, source_width=101, source_height=37)
    assert (canvas[:12] == PAD_VALUE).all() and (canvas[35:] == PAD_VALUE).all()
    # The picture is OpenCV's bilinear resize, pixel for pixel (what the models were trained and exported on).
    np.testing.assert_array_equal(canvas[12:35], cv2.resize(image, (64, 23), interpolation=cv2.INTER_LINEAR))


def test_an_image_of_the_input_size_is_copied_as_is() -> None:
    image = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    canvas, box = letterbox(image, (48, 64))
    np.testing.assert_array_equal(canvas, image)
    assert box == Letterbox(1.0, 0.0, 0.0, 64, 48)


def test_a_sliver_keeps_at_least_one_pixel() -> None:
    canvas, box = letterbox(np.full((1, 1000, 3), 9, np.uint8), (64, 64))
    assert box.pad_y == 31.0  # (64 - 1) // 2
    assert (canvas[31] == 9).all() and (canvas[:31] == PAD_VALUE).all() and (canvas[32:] == PAD_VALUE).all()


def test_to_source_undoes_the_letterbox_and_clips() -> None:
    box = Letterbox(scale=0.5, pad_x=0.0, pad_y=16.0, source_width=128, source_height=64)
    out = box.to_source(np.array([[22, 27, 42, 37], [-5, 10, 70, 50]], np.float32))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], [44, 22, 84, 42])
    # x: -10 -> 0, 140 -> 128; y: (10-16)*2 = -12 -> 0, (50-16)*2 = 68 -> 64.
    np.testing.assert_allclose(out[1], [0, 0, 128, 64])
    assert box.to_source(np.zeros((0, 4), np.float32)).shape == (0, 4)


@pytest.mark.parametrize("centered", [True, False])
@pytest.mark.parametrize(
    ("source_hw", "input_hw"), [((1080, 1920), (736, 1280)), ((300, 200), (64, 96)), ((37, 101), (48, 64))]
)
def test_boxes_go_there_and_back(source_hw: tuple[int, int], input_hw: tuple[int, int], centered: bool) -> None:
    _, box = letterbox(np.zeros((*source_hw, 3), np.uint8), input_hw, centered)
    height, width = source_hw
    source = np.array([[0, 0, width, height], [width * 0.25, height * 0.5, width * 0.75, height * 0.9]], np.float32)
    on_input = source * np.float32(box.scale) + np.array([box.pad_x, box.pad_y] * 2, np.float32)
    assert (on_input[0, 2:] <= np.array([input_hw[1], input_hw[0]]) + 1e-3).all()  # the whole source fits
    np.testing.assert_allclose(box.to_source(on_input), source, atol=1e-3)


def test_a_reduced_decode_maps_to_the_full_source() -> None:
    # A 1920x1080 JPEG decoded at 1/4 (480x270): the mapping goes to the 1920x1080 pixels, and is
    # exactly the full decode's (the reduction is a power of two).
    reduced = np.zeros((270, 480, 3), np.uint8)
    _, box_r = letterbox(reduced, (416, 416), source_wh=(1920, 1080))
    _, box_f = letterbox(np.zeros((1080, 1920, 3), np.uint8), (416, 416))
    assert box_r == box_f == Letterbox(416 / 1920, 0.0, 91.0, 1920, 1080)
    np.testing.assert_allclose(box_r.to_source(np.array([[0, 91, 416, 325]], np.float32)), [[0, 0, 1920, 1080]])
