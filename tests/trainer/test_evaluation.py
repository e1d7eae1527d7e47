"""Tests for the COCO-style evaluator: hand-checked cases and a randomized comparison with pycocotools."""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import numpy as np
import pytest

from trainer.evaluation import Detections, GroundTruth, Report, box_iou, evaluate

EPS = np.spacing(1)


def gt(boxes: list[list[float]], classes: list[int] | None = None, ignore: list[bool] | None = None) -> GroundTruth:
    return GroundTruth.of(np.array(boxes, dtype=float).reshape(-1, 4), classes or [0] * len(boxes), ignore)


def det(boxes: list[list[float]], scores: list[float], classes: list[int] | None = None) -> Detections:
    return Detections.of(np.array(boxes, dtype=float).reshape(-1, 4), scores, classes or [0] * len(boxes))


def test_perfect_match_is_ap_one() -> None:
    report = evaluate([gt([[10, 10, 50, 90]])], [det([[10, 10, 50, 90]], [0.7])], num_classes=1)
    np.testing.assert_allclose(report.ap, 1.0)
    assert report.map50 == pytest.approx(1.0)
    assert report.map50_95 == pytest.approx(1.0)
    assert report.num_gt.tolist() == [1]


def test_false_positive_ranked_above_true_positive() -> None:
    # FP (0.9) then TP (0.8): recall [0, 1], precision [0, 1/2] -> envelope 1/2 at every recall point.
    report = evaluate([gt([[0, 0, 10, 10]])], [det([[100, 100, 110, 110], [0, 0, 10, 10]], [0.9, 0.8])], num_classes=1)
    np.testing.assert_allclose(report.ap, 1 / (2 + EPS), rtol=0, atol=1e-12)
    assert report.map50 == pytest.approx(0.5)


def test_interleaved_fp_hand_computed_101_point_ap() -> None:
    # Two gts; TP (0.9), FP (0.8), TP (0.7): recall [.5, .5, 1], precision [1, 1/2, 2/3].
    # Envelope: 1 at recall <= 0.5 (51 of the 101 points), 2/3 above (50 points).
    gts = [gt([[0, 0, 10, 10], [20, 0, 30, 10]])]
    dets = [det([[0, 0, 10, 10], [50, 50, 60, 60], [20, 0, 30, 10]], [0.9, 0.8, 0.7])]
    report = evaluate(gts, dets, num_classes=1)
    expected = (51 * 1.0 + 50 * (2 / (3 + EPS))) / 101
    np.testing.assert_allclose(report.ap[0], expected, rtol=0, atol=1e-12)
    curve = report.pr_curves[0]
    assert curve is not None
    np.testing.assert_allclose(curve.precision[:51], 1.0, atol=1e-12)
    np.testing.assert_allclose(curve.precision[51:], 2 / 3, atol=1e-12)
    np.testing.assert_allclose(curve.score[:51], 0.9)
    np.testing.assert_allclose(curve.score[51:], 0.7)
    np.testing.assert_allclose(curve.recall, np.linspace(0, 1, 101))


def test_ignored_ground_truth_absorbs_detections() -> None:
    boxes = [[0, 0, 10, 10], [100, 100, 200, 200]]
    # The higher-scored detections sit on the second box; a small one inside it has low plain IoU but is
    # absorbed through crowd IoU (intersection over detection area), and many detections may share it.
    dets = [det([[100, 100, 200, 200], [120, 120, 140, 140], [0, 0, 10, 10]], [0.95, 0.93, 0.9])]
    ignored = evaluate([gt(boxes, ignore=[False, True])], dets, num_classes=1)
    np.testing.assert_allclose(ignored.ap, 1.0)
    assert ignored.num_gt.tolist() == [1]
    # Control: without the ignore flag the second box is a real gt, the small det a false positive.
    plain = evaluate([gt(boxes)], dets, num_classes=1)
    assert plain.ap[0, 0] < 0.99


def test_min_height_ignores_short_objects() -> None:
    gts = [gt([[0, 0, 20, 60], [100, 0, 120, 30]])]  # heights 60 and 30
    # Short det on the short gt (ignored), a short det on nothing (ignored), the tall TP, a tall FP last.
    dets = [det([[100, 0, 120, 30], [300, 0, 320, 20], [0, 0, 20, 60], [400, 0, 420, 80]], [0.99, 0.98, 0.9, 0.1])]
    report = evaluate(gts, dets, num_classes=1, min_height_px=40)
    assert report.num_gt.tolist() == [1]
    np.testing.assert_allclose(report.ap, 1.0)  # the trailing FP does not lower the envelope at recall 1
    unrestricted = evaluate(gts, dets, num_classes=1)
    assert unrestricted.ap[0, 0] < 0.99


def test_classes_without_ground_truth_are_excluded_from_the_mean() -> None:
    report = evaluate([gt([[0, 0, 10, 10]], [1])], [det([[0, 0, 10, 10], [5, 5, 9, 9]], [0.9, 0.8], [1, 0])], 3)
    assert math.isnan(report.ap[0, 0]) and math.isnan(report.ap[2, 0])
    assert report.pr_curves[0] is None and report.pr_curves[1] is not None
    assert report.map50 == pytest.approx(1.0)
    assert report.num_det.tolist() == [1, 1, 0]
    assert math.isnan(evaluate([gt([])], [det([], [])], num_classes=1).map50)


def test_crowd_iou_is_over_detection_area() -> None:
    iou = box_iou(
        np.array([[0.0, 0, 10, 10]]), np.array([[0.0, 0, 100, 100], [0.0, 0, 100, 100]]), np.array([True, False])
    )
    np.testing.assert_allclose(iou, [[1.0, 0.01]])


def test_invalid_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        GroundTruth.of(np.zeros((2, 3)), [0, 0])
    with pytest.raises(ValueError, match="x2 >= x1"):
        Detections.of([[10, 0, 0, 10]], [0.5], [0])
    with pytest.raises(ValueError, match="one per box"):
        Detections.of([[0, 0, 10, 10]], [0.5, 0.4], [0])
    with pytest.raises(ValueError, match="class ids"):
        evaluate([gt([[0, 0, 1, 1]], [2])], [det([], [])], num_classes=2)
    with pytest.raises(ValueError, match=r"0\.5"):
        evaluate([gt([[0, 0, 1, 1]])], [det([], [])], num_classes=1, iou_thresholds=[0.75])
    with pytest.raises(ValueError, match="one Detections"):
        evaluate([gt([])], [], num_classes=1)


def test_edge_cases_hand_checked() -> None:
    gts = [
        # IoU exactly 0.5 counts as a match at threshold 0.5 (COCO compares with >=).
        gt([[0, 0, 50, 50]]),
        # A detection on a real gt (IoU 0.83) that lies inside an ignore region (crowd IoU 1) is a true positive.
        gt([[0, 0, 100, 100], [0, 0, 50, 50]], ignore=[True, False]),
        # Tall gt (42 px) found by a detection 38 px tall: a true positive even with min_height_px=40.
        gt([[0, 0, 10, 42]]),
    ]
    dets = [det([[0, 0, 50, 100]], [0.9]), det([[0, 0, 50, 60]], [0.8]), det([[0, 0, 10, 38]], [0.7])]
    report = evaluate(gts, dets, num_classes=1, min_height_px=40)
    assert report.ap[0, 0] == pytest.approx(1.0)
    assert report.recall[0, 1] == pytest.approx(2 / 3)  # at IoU 0.55 the exact-0.5 match is lost


# --- randomized comparison with pycocotools -------------------------------------------------------------------


def _random_dataset(
    rng: np.random.Generator, num_images: int, num_classes: int
) -> tuple[list[GroundTruth], list[Detections]]:
    """Integer boxes (so both implementations compute bit-identical IoUs, exact ties included) and scores on
    a coarse grid (so score ties exercise the stable-sort tie-breaking)."""
    gts, dets = [], []
    for _ in range(num_images):
        n = int(rng.integers(0, 8))
        xy = rng.integers(0, 400, size=(n, 2))
        wh = rng.integers(4, 120, size=(n, 2))
        g_boxes = np.concatenate([xy, xy + wh], axis=1).astype(float)
        g_classes = rng.integers(0, num_classes, size=n)
        g_ignore = rng.random(n) < 0.15
        if n and rng.random() < 0.5:  # an ignore region around a real object, so both compete for detections
            k = int(rng.integers(0, n))
            region = g_boxes[k] + np.array([-1, -1, 1, 1]) * rng.integers(0, 40, size=4)
            g_boxes = np.concatenate([g_boxes, region[None]])
            g_classes = np.append(g_classes, g_classes[k])
            g_ignore = np.append(g_ignore, True)
        d_boxes, d_classes = [], []
        for box, cls in zip(g_boxes, g_classes, strict=True):
            for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):  # missed, found, or found twice
                jitter = rng.integers(-8, 9, size=4)
                b = box + jitter
                b[2], b[3] = max(b[2], b[0] + 2), max(b[3], b[1] + 2)
                d_boxes.append(b)
                d_classes.append(cls if rng.random() < 0.9 else rng.integers(0, num_classes))
        for _ in range(int(rng.integers(0, 5))):  # background false positives
            xy1 = rng.integers(0, 450, size=2)
            d_boxes.append(np.concatenate([xy1, xy1 + rng.integers(3, 90, size=2)]).astype(float))
            d_classes.append(rng.integers(0, num_classes))
        scores = np.round(rng.random(len(d_boxes)), 1)
        order = rng.permutation(g_boxes.shape[0])  # ignore regions anywhere in the list, not only last
        gts.append(GroundTruth.of(g_boxes[order], g_classes[order], g_ignore[order]))
        dets.append(Detections.of(np.array(d_boxes).reshape(-1, 4), scores, np.array(d_classes, dtype=int)))
    return gts, dets


def _pycocotools_eval(
    gts: list[GroundTruth], dets: list[Detections], num_classes: int, max_dets: int, min_height_px: float | None
) -> tuple[np.ndarray, np.ndarray]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b: np.ndarray) -> list[float]:
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    annotations: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for i, (g, d) in enumerate(zip(gts, dets, strict=True)):
        for b, c, ig in zip(g.boxes, g.classes, g.ignore, strict=True):
            w, h = b[2] - b[0], b[3] - b[1]
            # With min_height_px, put the height in COCO's "area" so its area range acts as a height range.
            area = float(h) if min_height_px is not None else float(w * h)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(c) + 1,
                    "bbox": xywh(b),
                    "area": area,
                    "iscrowd": int(ig),
                }
            )
        for b, s, c in zip(d.boxes, d.scores, d.classes, strict=True):
            results.append({"image_id": i + 1, "category_id": int(c) + 1, "bbox": xywh(b), "score": float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": [{"id": i + 1} for i in range(len(gts))],
            "annotations": annotations,
            "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        if min_height_px is not None:
            for ann in coco_dt.anns.values():
                ann["area"] = ann["bbox"][3]
        e = COCOeval(coco_gt, coco_dt, "bbox")
        e.params.maxDets = [max_dets]
        if min_height_px is not None:
            e.params.areaRng = [[min_height_px, 1e10]]
            e.params.areaRngLbl = ["all"]
        e.evaluate()
        e.accumulate()
    # precision: (T, R, K, A, M); recall: (T, K, A, M); -1 marks classes without ground truth.
    return e.eval["precision"][:, :, :, 0, 0], e.eval["recall"][:, :, 0, 0]


@pytest.mark.parametrize(
    ("seed", "num_classes", "max_dets", "min_height_px"),
    [(0, 2, 100, None), (1, 3, 100, None), (2, 3, 3, None), (3, 2, 100, 40.0), (4, 3, 2, 30.0), (5, 3, 100, None)],
)
def test_matches_pycocotools(seed: int, num_classes: int, max_dets: int, min_height_px: float | None) -> None:
    pytest.importorskip("pycocotools")
    rng = np.random.default_rng(seed)
    gts, dets = _random_dataset(rng, num_images=30, num_classes=num_classes)
    report: Report = evaluate(gts, dets, num_classes, max_dets=max_dets, min_height_px=min_height_px)
    precision, recall = _pycocotools_eval(gts, dets, num_classes, max_dets, min_height_px)

    has_gt = precision[0, 0, :] > -1
    assert has_gt.any()
    np.testing.assert_array_equal(~np.isnan(report.ap[:, 0]), has_gt)
    coco_ap = precision.mean(axis=1).T  # (K, T)
    np.testing.assert_allclose(report.ap[has_gt], coco_ap[has_gt], rtol=0, atol=1e-6)
    np.testing.assert_allclose(report.ap50[has_gt], coco_ap[has_gt, 0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(report.recall[has_gt], recall.T[has_gt], rtol=0, atol=1e-12)
    assert report.map50_95 == pytest.approx(float(precision[precision > -1].mean()), abs=1e-6)
    assert report.map50 == pytest.approx(float(precision[0][precision[0] > -1].mean()), abs=1e-6)
    for k in np.flatnonzero(has_gt):
        curve = report.pr_curves[k]
        assert curve is not None
        np.testing.assert_allclose(curve.precision, precision[0, :, k], rtol=0, atol=1e-12)
    # The data must be non-trivial for the comparison to mean anything.
    assert 0.05 < report.map50_95 < 0.98
