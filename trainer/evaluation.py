"""COCO-style box detection evaluation in numpy, a port of pycocotools' ``COCOeval`` (iouType "bbox").

Per image and class, detections are matched greedily by descending score to ground truths at each IoU
threshold, exactly as ``COCOeval.evaluateImg`` does:

- non-ignored ground truths are preferred; a detection whose best match is an ignored ground truth is itself
  ignored (neither a true nor a false positive);
- ``ignore`` ground truths behave like COCO's ``iscrowd=1`` regions: their IoU is intersection over the
  *detection's* area (pycocotools' crowd IoU, mirrored so results agree), and any number of detections may
  match one;
- with ``min_height_px``, ground truths shorter than it are ignored (but, like COCO's out-of-area-range boxes,
  still use plain IoU and match at most one detection), and unmatched detections shorter than it are ignored,
  as COCO does with area ranges;
- at most ``max_dets`` detections per image *and class* are kept, the highest scoring (pycocotools with
  ``useCats=1``).

Average precision is COCO's 101-point interpolated precision, averaged over recall 0, 0.01, ..., 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

# pycocotools' recall grid: 101 points 0, 0.01, ..., 1.
_RECALL_POINTS = 101


def coco_iou_thresholds() -> FloatArray:
    """COCO's IoU thresholds 0.5, 0.55, ..., 0.95, computed exactly as pycocotools does."""
    return np.linspace(0.5, 0.95, 10)


def _recall_thresholds() -> FloatArray:
    return np.linspace(0.0, 1.0, _RECALL_POINTS)


def _as_boxes(boxes: npt.ArrayLike, what: str) -> FloatArray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{what}: boxes must have shape (N, 4) as x1, y1, x2, y2; got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: boxes must be finite")
    if np.any(arr[:, 2] < arr[:, 0]) or np.any(arr[:, 3] < arr[:, 1]):
        raise ValueError(f"{what}: boxes need x2 >= x1 and y2 >= y1")
    return arr


def _as_vector(values: npt.ArrayLike, n: int, dtype: npt.DTypeLike, what: str) -> npt.NDArray[Any]:
    arr: npt.NDArray[Any] = np.asarray(values, dtype=dtype).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"{what}: expected {n} values (one per box), got {arr.shape[0]}")
    return arr


@dataclass(frozen=True)
class GroundTruth:
    """Ground truth of one image: ``boxes`` (N, 4) xyxy in pixels, ``classes`` (N,) ids, ``ignore`` (N,) flags.

    An ignored box is a "don't care" region (COCO's ``iscrowd``): detections on it count for nothing.
    """

    boxes: FloatArray
    classes: IntArray
    ignore: BoolArray

    @classmethod
    def of(cls, boxes: npt.ArrayLike, classes: npt.ArrayLike, ignore: npt.ArrayLike | None = None) -> GroundTruth:
        """Validate and convert array-likes; ``ignore`` defaults to all False."""
        b = _as_boxes(boxes, "ground truth")
        n = b.shape[0]
        c = _as_vector(classes, n, np.int64, "ground truth classes")
        ig = _as_vector(np.zeros(n, dtype=bool) if ignore is None else ignore, n, np.bool_, "ground truth ignore")
        return cls(boxes=b, classes=c.astype(np.int64), ignore=ig.astype(np.bool_))


@dataclass(frozen=True)
class Detections:
    """Detections of one image: ``boxes`` (N, 4) xyxy in pixels, ``scores`` (N,), ``classes`` (N,) ids."""

    boxes: FloatArray
    scores: FloatArray
    classes: IntArray

    @classmethod
    def of(cls, boxes: npt.ArrayLike, scores: npt.ArrayLike, classes: npt.ArrayLike) -> Detections:
        """Validate and convert array-likes."""
        b = _as_boxes(boxes, "detections")
        n = b.shape[0]
        s = _as_vector(scores, n, np.float64, "detection scores")
        if not np.all(np.isfinite(s)):
            raise ValueError("detections: scores must be finite")
        c = _as_vector(classes, n, np.int64, "detection classes")
        return cls(boxes=b, scores=s.astype(np.float64), classes=c.astype(np.int64))


@dataclass(frozen=True)
class PRCurve:
    """COCO's interpolated precision/recall curve of one class at one IoU threshold.

    ``precision[i]`` is the best precision reachable at recall >= ``recall[i]`` (0 where unreachable) and
    ``score[i]`` the score threshold that reaches it (0 where unreachable).
    """

    recall: FloatArray
    precision: FloatArray
    score: FloatArray


@dataclass(frozen=True)
class Report:
    """Evaluation result.

    ``ap`` and ``recall`` are (num_classes, len(iou_thresholds)); rows of classes without (non-ignored) ground
    truth are NaN and excluded from the means. ``map50`` is the mean AP at IoU 0.5, ``map50_95`` the mean AP
    over all thresholds (0.5:0.95 by default); both NaN when no class has ground truth. ``pr_curves`` holds one
    curve per class at IoU 0.5 (None for classes without ground truth).
    """

    iou_thresholds: FloatArray
    ap: FloatArray
    recall: FloatArray
    num_gt: IntArray
    num_det: IntArray
    map50: float
    map50_95: float
    pr_curves: tuple[PRCurve | None, ...]

    @property
    def ap50(self) -> FloatArray:
        """Per-class AP at IoU 0.5 (NaN for classes without ground truth)."""
        return self.ap[:, _index_of_half(self.iou_thresholds)]


def _index_of_half(thresholds: FloatArray) -> int:
    hits = np.flatnonzero(np.isclose(thresholds, 0.5, rtol=0.0, atol=1e-9))
    if hits.size == 0:
        raise ValueError("iou_thresholds must include 0.5 (mAP50 and the PR curves use it)")
    return int(hits[0])


def box_iou(dets: FloatArray, gts: FloatArray, crowd: BoolArray) -> FloatArray:
    """IoU matrix (D, G) of xyxy boxes; for crowd/ignore gts the union is the detection's area (pycocotools)."""
    w = np.minimum(dets[:, None, 2], gts[None, :, 2]) - np.maximum(dets[:, None, 0], gts[None, :, 0])
    h = np.minimum(dets[:, None, 3], gts[None, :, 3]) - np.maximum(dets[:, None, 1], gts[None, :, 1])
    overlaps = (w > 0) & (h > 0)
    inter = np.where(overlaps, w * h, 0.0)
    det_area = ((dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1]))[:, None]
    gt_area = ((gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1]))[None, :]
    union = np.where(crowd[None, :], det_area, det_area + gt_area - inter)
    # A positive intersection implies a positive union, so the division is safe where it is taken.
    return np.divide(inter, union, out=np.zeros_like(inter), where=overlaps)


@dataclass(frozen=True)
class _ImageClassResult:
    scores: FloatArray  # (D,) sorted descending
    matched: BoolArray  # (T, D)
    ignored: BoolArray  # (T, D)
    gt_ignored: BoolArray  # (G,)


def _evaluate_image_class(
    gt_boxes: FloatArray,
    gt_crowd: BoolArray,
    gt_out_of_range: BoolArray,
    det_boxes: FloatArray,
    det_scores: FloatArray,
    det_out_of_range: BoolArray,
    thresholds: FloatArray,
    max_dets: int,
) -> _ImageClassResult:
    """Port of ``COCOeval.evaluateImg`` for one image and class."""
    gt_ig_unsorted = gt_crowd | gt_out_of_range
    gt_order = np.argsort(gt_ig_unsorted.astype(np.int64), kind="mergesort")  # ignored gts last
    gt_ig = gt_ig_unsorted[gt_order]
    crowd = gt_crowd[gt_order]
    det_order = np.argsort(-det_scores, kind="mergesort")[:max_dets]
    scores = det_scores[det_order]
    num_t, num_d, num_g = thresholds.shape[0], det_order.shape[0], gt_order.shape[0]
    matched = np.zeros((num_t, num_d), dtype=bool)
    ignored = np.zeros((num_t, num_d), dtype=bool)
    if num_d and num_g:
        ious = box_iou(det_boxes[det_order], gt_boxes[gt_order], crowd).tolist()
        gt_ig_list, crowd_list = gt_ig.tolist(), crowd.tolist()
        for ti, t in enumerate(thresholds.tolist()):
            gt_taken = [False] * num_g
            for d in range(num_d):
                best, m = min(t, 1 - 1e-10), -1
                row = ious[d]
                for g in range(num_g):
                    if gt_taken[g] and not crowd_list[g]:
                        continue
                    # Once matched to a real gt, never fall back to an ignored one (they are sorted last).
                    if m > -1 and not gt_ig_list[m] and gt_ig_list[g]:
                        break
                    if row[g] < best:
                        continue
                    best, m = row[g], g
                if m == -1:
                    continue
                matched[ti, d] = True
                ignored[ti, d] = gt_ig_list[m]
                gt_taken[m] = True
    ignored |= ~matched & det_out_of_range[det_order][None, :]
    return _ImageClassResult(scores=scores, matched=matched, ignored=ignored, gt_ignored=gt_ig)


def _accumulate(
    results: list[_ImageClassResult], num_t: int, recall_thresholds: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, int] | None:
    """Port of ``COCOeval.accumulate`` for one class: (precision (T, R), score (T, R), recall (T,), ...)."""
    gt_ignored = np.concatenate([r.gt_ignored for r in results]) if results else np.zeros(0, dtype=bool)
    num_gt = int(np.count_nonzero(~gt_ignored))
    if num_gt == 0:
        return None
    scores = np.concatenate([r.scores for r in results])
    order = np.argsort(-scores, kind="mergesort")
    scores_sorted = scores[order]
    matched = np.concatenate([r.matched for r in results], axis=1)[:, order]
    ignored = np.concatenate([r.ignored for r in results], axis=1)[:, order]
    tp_sum = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
    fp_sum = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
    num_r = recall_thresholds.shape[0]
    precision = np.zeros((num_t, num_r))
    score_at = np.zeros((num_t, num_r))
    recall = np.zeros(num_t)
    nd = scores.shape[0]
    for t in range(num_t):
        tp, fp = tp_sum[t], fp_sum[t]
        rc = tp / num_gt
        pr = tp / (fp + tp + np.spacing(1))
        if nd:
            recall[t] = rc[-1]
            # Make precision monotonically non-increasing in recall (the "interpolated" envelope).
            pr = np.maximum.accumulate(pr[::-1])[::-1]
        inds = np.searchsorted(rc, recall_thresholds, side="left")
        valid = inds < nd
        precision[t, valid] = pr[inds[valid]]
        score_at[t, valid] = scores_sorted[inds[valid]]
    return precision, score_at, recall, scores_sorted, num_gt


def evaluate(
    gts: Sequence[GroundTruth],
    dets: Sequence[Detections],
    num_classes: int,
    iou_thresholds: Sequence[float] | FloatArray | None = None,
    max_dets: int = 100,
    min_height_px: float | None = None,
) -> Report:
    """Evaluate detections against ground truth; ``gts[i]`` and ``dets[i]`` belong to the same image.

    ``iou_thresholds`` defaults to COCO's 0.5:0.05:0.95 and must contain 0.5. ``max_dets`` caps detections per
    image and class. ``min_height_px`` restricts the evaluation to objects at least that tall (see module doc).
    """
    if len(gts) != len(dets):
        raise ValueError(f"need one Detections per GroundTruth image; got {len(gts)} and {len(dets)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if max_dets < 1:
        raise ValueError(f"max_dets must be >= 1, got {max_dets}")
    if min_height_px is not None and not min_height_px >= 0:
        raise ValueError(f"min_height_px must be >= 0, got {min_height_px}")
    thresholds = coco_iou_thresholds() if iou_thresholds is None else np.asarray(iou_thresholds, dtype=np.float64)
    if thresholds.ndim != 1 or thresholds.size == 0 or np.any((thresholds < 0) | (thresholds > 1)):
        raise ValueError("iou_thresholds must be a non-empty list of values in [0, 1]")
    half = _index_of_half(thresholds)
    for i, (g, d) in enumerate(zip(gts, dets, strict=True)):
        for what, classes in (("ground truth", g.classes), ("detections", d.classes)):
            if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
                raise ValueError(f"image {i}: {what} class ids must be in [0, {num_classes})")

    per_class: list[list[_ImageClassResult]] = [[] for _ in range(num_classes)]
    for g, d in zip(gts, dets, strict=True):
        gt_short = _shorter_than(g.boxes, min_height_px)
        det_short = _shorter_than(d.boxes, min_height_px)
        for c in np.union1d(g.classes, d.classes).tolist():
            gm, dm = g.classes == c, d.classes == c
            per_class[c].append(
                _evaluate_image_class(
                    g.boxes[gm],
                    g.ignore[gm],
                    gt_short[gm],
                    d.boxes[dm],
                    d.scores[dm],
                    det_short[dm],
                    thresholds,
                    max_dets,
                )
            )

    num_t = thresholds.shape[0]
    recall_thresholds = _recall_thresholds()
    ap = np.full((num_classes, num_t), np.nan)
    recall = np.full((num_classes, num_t), np.nan)
    num_gt = np.zeros(num_classes, dtype=np.int64)
    num_det = np.zeros(num_classes, dtype=np.int64)
    curves: list[PRCurve | None] = []
    for c in range(num_classes):
        num_det[c] = sum(r.scores.shape[0] for r in per_class[c])
        acc = _accumulate(per_class[c], num_t, recall_thresholds)
        if acc is None:
            curves.append(None)
            continue
        precision, score_at, rec, _, n_gt = acc
        num_gt[c] = n_gt
        ap[c] = precision.mean(axis=1)
        recall[c] = rec
        curves.append(PRCurve(recall=recall_thresholds.copy(), precision=precision[half], score=score_at[half]))

    has_gt = num_gt > 0
    map50 = float(ap[has_gt, half].mean()) if has_gt.any() else float("nan")
    map50_95 = float(ap[has_gt].mean()) if has_gt.any() else float("nan")
    return Report(
        iou_thresholds=thresholds,
        ap=ap,
        recall=recall,
        num_gt=num_gt,
        num_det=num_det,
        map50=map50,
        map50_95=map50_95,
        pr_curves=tuple(curves),
    )


def _shorter_than(boxes: FloatArray, min_height_px: float | None) -> BoolArray:
    if min_height_px is None:
        return np.zeros(boxes.shape[0], dtype=bool)
    return np.asarray((boxes[:, 3] - boxes[:, 1]) < min_height_px, dtype=bool)
