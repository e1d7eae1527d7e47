"""Report images: written, valid, of sensible size, and showing what they should."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.helpers import SHARED
from trainer.evaluation import Detections, GroundTruth, evaluate
from trainer_worker.plots import pr_curve_png, sample_predictions_jpg, training_curves_png

VAL = SHARED / "data" / "apollo-cars" / "val"
CLASSES = ("car", "van")


def _kitti(label: Path) -> GroundTruth:
    boxes, classes, ignore = [], [], []
    for line in label.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in (*CLASSES, "ignore"):
            boxes.append([float(v) for v in parts[4:8]])
            classes.append(CLASSES.index(parts[0]) if parts[0] in CLASSES else 0)
            ignore.append(parts[0] == "ignore")
    return GroundTruth.of(np.array(boxes).reshape(-1, 4), classes, ignore)


def _noisy(gt: GroundTruth, rng: np.random.Generator) -> Detections:
    """Ground truth jittered by a few pixels plus one false positive, with random scores."""
    keep = ~gt.ignore
    boxes = gt.boxes[keep] + rng.normal(0, 4, (int(keep.sum()), 4))
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    boxes = np.vstack([boxes, [[10, 10, 60, 50]]])
    classes = np.append(gt.classes[keep], 0)
    return Detections.of(boxes, rng.uniform(0.3, 1.0, len(boxes)), classes)


def _image(path: Path, fmt: str) -> Image.Image:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as img:
        assert img.format == fmt
        img.load()
        return img.copy()


def test_pr_curve_png_from_a_real_evaluation(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gts = [_kitti(p) for p in sorted((VAL / "labels").glob("*.txt"))[:5]]
    report = evaluate(gts, [_noisy(g, rng) for g in gts], num_classes=2)
    assert report.pr_curves[0] is not None
    img = _image(pr_curve_png(report, CLASSES, tmp_path / "pr.png"), "PNG")
    assert (img.width, img.height) == (600, 450)
    # A drawn figure, not a blank canvas: several distinct colours.
    assert len(img.convert("RGB").getcolors(maxcolors=100_000) or []) > 20


def test_pr_curve_png_checks_class_names_and_handles_no_ground_truth(tmp_path: Path) -> None:
    report = evaluate([GroundTruth.of(np.zeros((0, 4)), [])], [Detections.of([[0, 0, 5, 5]], [0.5], [1])], 2)
    assert all(c is None for c in report.pr_curves)
    _image(pr_curve_png(report, CLASSES, tmp_path / "empty.png"), "PNG")
    with pytest.raises(ValueError, match="3 class names"):
        pr_curve_png(report, ("a", "b", "c"), tmp_path / "bad.png")


def test_training_curves_png(tmp_path: Path) -> None:
    history = [
        {"epoch": e, "loss": 9.0 / e, "box_loss": 3.0 / e, "cls_loss": 4.0 / e, "dfl_loss": 2.0 / e}
        | ({"val_map50": 0.1 * e} if e % 2 == 0 else {})
        for e in range(1, 8)
    ]
    img = _image(training_curves_png(history, tmp_path / "sub" / "curves.png"), "PNG")
    assert (img.width, img.height) == (1000, 400)
    with pytest.raises(ValueError, match="empty"):
        training_curves_png([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no loss or map"):
        training_curves_png([{"lr": 0.1}], tmp_path / "x.png")


def test_sample_predictions_jpg_real_frames(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = sorted((VAL / "images").glob("*.jpg"))[:3]
    samples = []
    for image in images:
        gt = _kitti(VAL / "labels" / (image.stem + ".txt"))
        samples.append((image, _noisy(gt, rng), gt))
    img = _image(sample_predictions_jpg(samples, CLASSES, tmp_path / "samples.jpg", columns=2), "JPEG")
    # 1920x1080 frames at 480 px wide tiles: 2 columns, 2 rows of 270 px.
    assert (img.width, img.height) == (960, 540)


def test_sample_predictions_draw_predictions_and_ground_truth_in_their_colours(tmp_path: Path) -> None:
    frame = np.zeros((240, 480, 3), np.uint8)
    dets = Detections.of([[40, 40, 200, 200], [300, 50, 400, 100]], [0.9, 0.1], [0, 0])
    gt = np.array([[250, 120, 450, 220]])
    path = sample_predictions_jpg([(frame, dets, gt)], CLASSES, tmp_path / "one.jpg", tile_width_px=480)
    rgb = np.asarray(_image(path, "JPEG").convert("RGB")).astype(int)
    assert rgb.shape == (240, 480, 3)
    # The car prediction's left edge is green; the ground truth's top edge is white.
    left_edge = rgb[60:180, 40]
    assert (left_edge[:, 1] > 150).all() and (left_edge[:, 0] < 80).all()
    assert (rgb[120, 280:420] > 180).all()
    # The 0.1 prediction is below min_score: nothing drawn along its top edge.
    assert rgb[50, 320:380].max() < 60


def test_sample_predictions_rejects_bad_input(tmp_path: Path) -> None:
    dets = Detections.of(np.zeros((0, 4)), [], [])
    with pytest.raises(ValueError, match="no samples"):
        sample_predictions_jpg([], CLASSES, tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="BGR uint8"):
        sample_predictions_jpg([(np.zeros((10, 10), np.float32), dets, [])], CLASSES, tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="cannot read"):
        sample_predictions_jpg([(tmp_path / "missing.jpg", dets, [])], CLASSES, tmp_path / "x.jpg")


def test_sample_predictions_take_spelled_out_predictions_and_labelled_images(tmp_path: Path) -> None:
    from trainer.data import LabelledImage

    frame = np.zeros((240, 480, 3), np.uint8)
    image_path = tmp_path / "frame.png"
    assert cv2.imwrite(str(image_path), frame)
    labelled = LabelledImage(
        path=image_path,
        boxes=np.array([[250, 120, 450, 220]], np.float32),
        classes=np.array([0]),
        ignore=np.array([[20, 20, 120, 100]], np.float32),
    )
    sample = (image_path, np.array([[300, 140, 420, 200]]), np.array([0.8]), np.array([1]), labelled)
    path = sample_predictions_jpg([sample], CLASSES, tmp_path / "five.jpg", tile_width_px=480)
    rgb = np.asarray(_image(path, "JPEG").convert("RGB")).astype(int)
    assert (rgb[120, 280:420] > 180).all()  # ground truth: white
    grey = rgb[20, 40:100]
    assert (np.abs(grey - 150) < 40).all()  # ignore region: grey
    van = rgb[160:190, 300]  # van prediction (class 1): orange, BGR (0, 165, 255)
    assert (van[:, 0] > 180).all() and (van[:, 2] < 80).all()
    with pytest.raises(ValueError, match="differ"):
        sample_predictions_jpg([(frame, np.zeros((2, 4)), [0.5], [0], [])], CLASSES, tmp_path / "x.jpg")
