"""load_folder and the augmentation pipeline: splits, class handling, and boxes that follow crop and flip."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import SHARED
from tests.trainer.synthetic import make_kitti
from trainer.data import LabelledImage, detect_format, load_folder
from trainer_worker.augment import (
    AugmentConfig,
    BatchIterator,
    ImageCache,
    frame_scale,
    make_mosaic,
    make_sample,
    pick_target,
)
from trainer_worker.loop import Recipe

APOLLO = SHARED / "data" / "apollo-cars"


@pytest.mark.skipif(not APOLLO.is_dir(), reason="needs the shared apollo-cars data set")
def test_apollo_uses_its_own_splits_and_ignores_vans() -> None:
    data = load_folder(APOLLO, ["car"], ["van", "truck", "bus"])
    assert data.class_names == ("car",)
    assert (len(data.train), len(data.val)) == (98, 50)
    assert all("/train/" in im.path.as_posix() for im in data.train)
    first = next(im for im in data.train if im.path.name == "000000.jpg")
    # 000000.txt: 9 cars; 3 ignore + 1 bus regions; pedestrians etc. are dropped.
    assert len(first.boxes) == 9 and set(first.classes.tolist()) == {0}
    assert len(first.ignore) == 4
    assert first.boxes.dtype == np.float32 and first.ignore.shape == (4, 4)


def test_kitti_all_classes_and_format_detection(tmp_path: Path) -> None:
    root = make_kitti(tmp_path / "ds", n_train=3, n_val=2)
    assert detect_format(root) == "kitti"
    data = load_folder(root, None, [])
    assert data.class_names == ("car", "van")
    assert len(data.train) == 3 and len(data.val) == 2
    assert all(len(im.boxes) == 3 and len(im.ignore) == 0 for im in data.train)


def test_yolo_without_splits_gets_a_seeded_split(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "classes.txt").write_text("car\nvan\n")
    for i in range(10):
        cv2.imwrite(str(tmp_path / "images" / f"{i}.jpg"), np.zeros((50, 100, 3), np.uint8))
        (tmp_path / "labels" / f"{i}.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.25 0.25 0.1 0.1\n")
    assert detect_format(tmp_path) == "yolo"
    a = load_folder(tmp_path, ["car"], ["van"], val_fraction=0.3, seed=1)
    b = load_folder(tmp_path, ["car"], ["van"], val_fraction=0.3, seed=1)
    assert len(a.val) == 3 and len(a.train) == 7
    assert [im.path for im in a.val] == [im.path for im in b.val]
    # Normalised YOLO boxes are scaled to pixels of the 100 x 50 image.
    np.testing.assert_allclose(a.train[0].boxes, [[40, 15, 60, 35]], atol=1e-4)
    np.testing.assert_allclose(a.train[0].ignore, [[20, 10, 30, 15]], atol=1e-4)


def test_empty_or_unknown_data_is_an_actionable_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_folder(tmp_path / "missing", None, [])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="format"):
        load_folder(tmp_path / "empty", None, [])
    root = make_kitti(tmp_path / "ds", n_train=2, n_val=1)
    with pytest.raises(ValueError, match="its classes are"):
        load_folder(root, ["bus"], [])


def _square_image(tmp_path: Path, box: tuple[int, int, int, int]) -> LabelledImage:
    image = np.zeros((200, 300, 3), np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = 255
    path = tmp_path / "square.png"
    cv2.imwrite(str(path), image)
    return LabelledImage(path, np.array([box], np.float32), np.array([0], np.int32), np.zeros((0, 4), np.float32))


@pytest.mark.parametrize("flip", [0.0, 1.0])
@pytest.mark.parametrize("zoom", [1.0, 1.5])
def test_boxes_follow_crop_zoom_and_flip(tmp_path: Path, flip: float, zoom: float) -> None:
    item = _square_image(tmp_path, (100, 60, 140, 90))
    cfg = AugmentConfig(
        crop_w=96,
        crop_h=64,
        image_scale=1.0,
        zoom_min=zoom,
        zoom_max=zoom,
        object_bias=1.0,
        flip_p=flip,
        hsv_h=0,
        hsv_s=0,
        hsv_v=0,
        min_visible=0.0,
        min_box_px=1.0,
    )
    cache = ImageCache(1.0)
    for seed in range(6):
        crop, boxes, classes = make_sample(np.random.default_rng(seed), item, cache, cfg)
        assert crop.shape == (64, 96, 3) and crop.dtype == np.uint8
        assert len(boxes) == 1 and classes.tolist() == [0]
        ys, xs = np.nonzero(crop[..., 0] > 127)
        lit = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
        # The white square's pixels and the transformed box agree to a pixel (interpolation at the edges).
        np.testing.assert_allclose(boxes[0], lit, atol=1.0)


def test_mosaic_quadrants_carry_their_own_boxes(tmp_path: Path) -> None:
    item = _square_image(tmp_path, (100, 60, 140, 90))
    cfg = AugmentConfig(
        crop_w=192,
        crop_h=128,
        image_scale=1.0,
        zoom_min=1.0,
        zoom_max=1.0,
        object_bias=1.0,
        flip_p=0.5,
        hsv_h=0,
        hsv_s=0,
        hsv_v=0,
        min_visible=0.0,
        min_box_px=1.0,
    )
    cache = ImageCache(1.0)
    for seed in range(4):
        canvas, boxes, classes = make_mosaic(np.random.default_rng(seed), [item] * 4, cache, cfg)
        assert canvas.shape == (128, 192, 3) and len(boxes) == len(classes) >= 1
        lit = canvas[..., 0] > 127
        for x1, y1, x2, y2 in np.round(boxes).astype(int):
            # Every box sits on white pixels of its quadrant's square, and the square is inside the canvas.
            assert 0 <= x1 < x2 <= 192 and 0 <= y1 < y2 <= 128
            assert lit[y1:y2, x1:x2].mean() > 0.8
        # Nothing white lies outside the boxes.
        covered = np.zeros_like(lit)
        for x1, y1, x2, y2 in np.round(boxes).astype(int):
            covered[max(y1 - 1, 0) : y2 + 1, max(x1 - 1, 0) : x2 + 1] = True
        assert not (lit & ~covered).any()
    with pytest.raises(ValueError, match="4 images"):
        make_mosaic(np.random.default_rng(0), [item], cache, cfg)


def test_closing_the_mosaic_draws_the_plain_crops(tmp_path: Path) -> None:
    item = _square_image(tmp_path, (100, 60, 140, 90))
    cfg = AugmentConfig(crop_w=128, crop_h=64, image_scale=1.0, zoom_min=0.8, zoom_max=1.2, mosaic_p=1.0)
    mosaics = BatchIterator([item] * 4, cfg, batch_size=2, seed=5, samples_per_epoch=8)
    plain = BatchIterator([item] * 4, replace(cfg, mosaic_p=0.0), batch_size=2, seed=5, samples_per_epoch=8)
    closed = list(mosaics.epoch(1, mosaic=False))
    expected = list(plain.epoch(1))
    assert len(closed) == len(expected) == 4
    for got, want in zip(closed, expected, strict=True):
        np.testing.assert_array_equal(got.images, want.images)
        np.testing.assert_array_equal(got.boxes, want.boxes)
    # With the mosaic open, every sample of mosaic_p=1.0 is a mosaic, so the batches differ.
    assert not any(np.array_equal(a.images, b.images) for a, b in zip(mosaics.epoch(1), expected, strict=True))


def test_mosaic_zoom_shrinks_the_quadrants(tmp_path: Path) -> None:
    item = _square_image(tmp_path, (100, 60, 140, 90))  # 40 x 30
    cfg = AugmentConfig(
        crop_w=192,
        crop_h=128,
        image_scale=1.0,
        zoom_min=1.0,
        zoom_max=1.0,
        object_bias=1.0,
        hsv_h=0,
        hsv_s=0,
        hsv_v=0,
        min_visible=0.99,
        mosaic_zoom=0.5,
    )
    _, boxes, _ = make_mosaic(np.random.default_rng(0), [item] * 4, ImageCache(1.0), cfg)
    assert len(boxes) >= 1
    # Whole squares only (min_visible 0.99), each at half size.
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], 20.0, atol=1.0)
    np.testing.assert_allclose(boxes[:, 3] - boxes[:, 1], 15.0, atol=1.0)


def test_fit_zooms_out_until_the_target_is_whole(tmp_path: Path) -> None:
    item = _square_image(tmp_path, (40, 20, 240, 180))  # 200 x 160, larger than the 96 x 64 crop
    cfg = AugmentConfig(
        crop_w=96,
        crop_h=64,
        image_scale=1.0,
        zoom_min=1.0,
        zoom_max=1.0,
        object_bias=1.0,
        hsv_h=0,
        hsv_s=0,
        hsv_v=0,
        min_visible=0.0,
        fit_p=1.0,
        fit_fraction=0.9,
    )
    for seed in range(6):
        crop, boxes, _ = make_sample(np.random.default_rng(seed), item, ImageCache(1.0), cfg)
        assert len(boxes) == 1
        x1, y1, x2, y2 = boxes[0]
        # Zoomed by 0.9 * 64 / 160: the whole square, 0.9 of the crop's height, nowhere cut by the crop.
        assert y2 - y1 == pytest.approx(0.9 * 64, abs=0.5) and x2 - x1 == pytest.approx(0.9 * 64 * 200 / 160, abs=0.5)
        assert x1 > 0 and y1 > 0 and x2 < 96 and y2 < 64
        ys, xs = np.nonzero(crop[..., 0] > 127)
        np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], boxes[0], atol=1.0)
    # Without fit the same crop cuts the square (the crop is smaller than it).
    cut = replace(cfg, fit_p=0.0)
    _, boxes, _ = make_sample(np.random.default_rng(0), item, ImageCache(1.0), cut)
    assert (boxes[0, 2] - boxes[0, 0], boxes[0, 3] - boxes[0, 1]) == (96, 64)


def test_target_size_power_favours_large_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 100, 100]], np.float32)

    def picks(power: float) -> float:
        rng = np.random.default_rng(0)
        return float(np.mean([pick_target(rng, boxes, 1.0, power) == 1 for _ in range(2000)]))

    assert picks(0.0) == pytest.approx(0.5, abs=0.05)
    assert picks(1.0) == pytest.approx(100 / 110, abs=0.03)
    assert pick_target(np.random.default_rng(0), boxes, 0.0, 1.0) is None
    assert pick_target(np.random.default_rng(0), boxes[:0], 1.0, 1.0) is None


def test_the_training_scale_follows_the_export_size(tmp_path: Path) -> None:
    item = _square_image(tmp_path, (100, 60, 140, 90))  # a 300 x 200 frame
    assert frame_scale([item], (960, 544)) == pytest.approx(544 / 200)
    assert frame_scale([item], (150, 544)) == pytest.approx(0.5)
    # 1920x1080 frames served at 960x544: crops at 2/3 of the source (times the random zoom).
    assert Recipe().augment_config(0.5).image_scale == pytest.approx(2 / 3)
    assert Recipe(image_scale=0.9).augment_config(0.5).image_scale == 0.9
    with pytest.raises(ValueError, match="no training images"):
        frame_scale([], (960, 544))


def test_cut_boxes_are_dropped_and_targets_padded(tmp_path: Path) -> None:
    item = _square_image(tmp_path, (100, 60, 140, 90))
    cfg = AugmentConfig(
        crop_w=64,
        crop_h=64,
        image_scale=1.0,
        zoom_min=1.0,
        zoom_max=1.0,
        object_bias=0.0,
        hsv_h=0,
        hsv_s=0,
        hsv_v=0,
        max_boxes=5,
    )
    batches = BatchIterator([item] * 4, cfg, batch_size=2, seed=3, samples_per_epoch=8)
    seen_empty = False
    for batch in batches.epoch(0):
        assert batch.images.shape == (2, 64, 64, 3) and batch.images.dtype == np.float32
        assert batch.boxes.shape == (2, 5, 4) and batch.labels.shape == (2, 5) and batch.mask.shape == (2, 5)
        for boxes, mask in zip(batch.boxes, batch.mask, strict=True):
            for b in boxes[mask > 0]:
                # A kept box is at least 40% visible: of the 40 x 30 square at least 480 px^2.
                assert (b[2] - b[0]) * (b[3] - b[1]) >= 0.4 * 40 * 30 - 1
            seen_empty |= not mask.any()
    assert seen_empty  # uniform crops of a 300 x 200 image often miss the square


def test_batches_are_deterministic_and_sharded(tmp_path: Path) -> None:
    root = make_kitti(tmp_path / "ds", n_train=6, n_val=1)
    images = load_folder(root, ["car"], ["van"]).train
    cfg = AugmentConfig(crop_w=64, crop_h=64, image_scale=1.0)
    whole = BatchIterator(images, cfg, batch_size=2, seed=5, samples_per_epoch=8)
    again = BatchIterator(images, cfg, batch_size=2, seed=5, samples_per_epoch=8)
    a, b = list(whole.epoch(1)), list(again.epoch(1))
    assert len(a) == 4
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.images, y.images)
        np.testing.assert_array_equal(x.boxes, y.boxes)
    assert not np.array_equal(a[0].images, next(iter(whole.epoch(2))).images)
    shards = [
        BatchIterator(images, cfg, batch_size=2, seed=5, worker_index=k, num_workers=2, samples_per_epoch=8)
        for k in range(2)
    ]
    s0, s1 = list(shards[0].epoch(1)), list(shards[1].epoch(1))
    assert len(s0) == len(s1) == 2
    # Worker k's j-th sample is global sample (step * batch + j) * workers + k of the same epoch.
    np.testing.assert_array_equal(s0[0].images[0], a[0].images[0])
    np.testing.assert_array_equal(s1[0].images[0], a[0].images[1])
    assert next(iter(whole.epoch(1, start_step=3))).images.tobytes() == a[3].images.tobytes()
