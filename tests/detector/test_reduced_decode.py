"""JPEGs much larger than the model input are decoded at a DCT-reduced size; boxes must still map
back to the source's pixels exactly as after a full decode."""

from __future__ import annotations

import cv2
import numpy as np

from detector.imaging import decode_for_input, jpeg_reduction
from kit.letterbox import letterbox


def test_reduction_picks_the_largest_exact_factor() -> None:
    assert jpeg_reduction(1920, 1080, (416, 416)) == 4  # 1920/4 = 480 >= 416 * (1920/1920)
    assert jpeg_reduction(1920, 1080, (640, 640)) == 2
    assert jpeg_reduction(640, 480, (640, 640)) == 1
    assert jpeg_reduction(1922, 1081, (64, 64)) == 1  # no factor divides an odd height
    assert jpeg_reduction(4000, 3000, (320, 320)) == 8


def test_reduced_decode_maps_to_source_pixels_like_a_full_decode() -> None:
    rng = np.random.default_rng(0)
    source = cv2.GaussianBlur(rng.integers(0, 255, (1080, 1920, 3), dtype=np.uint8), (9, 9), 3)
    ok, jpeg = cv2.imencode(".jpg", source)
    assert ok
    reduced, width, height = decode_for_input(jpeg.tobytes(), 40_000_000, (416, 416))
    assert reduced.shape == (270, 480, 3) and (width, height) == (1920, 1080)
    full, _, _ = decode_for_input(jpeg.tobytes(), 40_000_000, None)
    assert full.shape == (1080, 1920, 3)
    for centered in (True, False):
        canvas_r, box_r = letterbox(reduced, (416, 416), centered, source_wh=(width, height))
        canvas_f, box_f = letterbox(full, (416, 416), centered)
        assert box_r == box_f
        # The pictures agree up to resampling differences.
        assert np.abs(canvas_r.astype(int) - canvas_f.astype(int)).mean() < 4
