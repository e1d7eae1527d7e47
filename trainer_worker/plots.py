"""Images for a training run's report: PR curves, training curves, and sample predictions.

Figures are drawn with matplotlib's object API on an Agg canvas per figure (no pyplot, so no
global backend or figure registry is touched); the sample grid is drawn with OpenCV, which is
much faster for boxes on photos. Every function writes one file and returns its path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from trainer.evaluation import Report

# Prediction colours per class (BGR, OpenCV); ground truth is always white, ignore regions grey.
_CLASS_COLOURS_BGR = ((0, 200, 0), (0, 165, 255), (255, 128, 0), (200, 0, 200), (0, 220, 220), (128, 0, 255))
_GT_BGR = (255, 255, 255)
_IGNORE_BGR = (150, 150, 150)


class BoxesLike(Protocol):
    boxes: npt.NDArray[Any]


class DetectionsLike(Protocol):
    """trainer.evaluation.Detections or anything with the same fields (xyxy pixels)."""

    boxes: npt.NDArray[Any]
    scores: npt.NDArray[Any]
    classes: npt.NDArray[Any]


Image = npt.NDArray[np.uint8] | Path | str
GroundTruthLike = BoxesLike | npt.ArrayLike
# (image as BGR array or file path, predictions, ground truth), or the same with the predictions
# spelled out: (image, boxes, scores, classes, ground truth). Ground truth is an (N, 4) xyxy array,
# a trainer.evaluation.GroundTruth (``ignore`` flags) or a trainer.data.LabelledImage (``ignore`` regions).
Sample = (
    tuple[Image, DetectionsLike, GroundTruthLike]
    | tuple[Image, npt.ArrayLike, npt.ArrayLike, npt.ArrayLike, GroundTruthLike]
)


def _figure(width_in: float, height_in: float) -> Any:
    fig = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), format="png")
    return path


def pr_curve_png(report: Report, class_names: Sequence[str], path: Path) -> Path:
    """Precision/recall at IoU 0.5 per class (COCO's interpolated curve), AP50 in the legend."""
    if len(class_names) != len(report.pr_curves):
        raise ValueError(f"{len(class_names)} class names for a report of {len(report.pr_curves)} classes")
    fig = _figure(6.0, 4.5)
    ax = fig.add_subplot()
    ap50 = report.ap50
    drawn = 0
    for c, (name, curve) in enumerate(zip(class_names, report.pr_curves, strict=True)):
        if curve is None:
            continue
        label = f"{name}  AP50 {ap50[c]:.3f}  (n={report.num_gt[c]})"
        ax.plot(curve.recall, curve.precision, linewidth=1.5, label=label)
        drawn += 1
    if drawn:
        ax.legend(loc="lower left", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no class has ground truth", ha="center", va="center", transform=ax.transAxes)
    map50 = "n/a" if math.isnan(report.map50) else f"{report.map50:.3f}"
    ax.set(xlim=(0.0, 1.0), ylim=(0.0, 1.02), xlabel="recall", ylabel="precision", title=f"PR @ IoU 0.5, mAP50 {map50}")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def _series(history: Sequence[Mapping[str, float]], key: str) -> npt.NDArray[np.float64]:
    return np.array([float(row.get(key, math.nan)) for row in history], dtype=np.float64)


def training_curves_png(history: Sequence[Mapping[str, float]], path: Path) -> Path:
    """Per-epoch curves: every key with "loss" in its name on the left, every "map" key on the right.

    ``history[i]`` is epoch i's metrics (an ``epoch`` key, when present, gives the x value); a key
    missing from some epochs (validation every few epochs) is drawn through the epochs that have it.
    """
    if not history:
        raise ValueError("training history is empty: nothing to plot")
    keys = sorted({k for row in history for k in row if k != "epoch"})
    loss_keys = [k for k in keys if "loss" in k.lower()]
    map_keys = [k for k in keys if "map" in k.lower()]
    if not loss_keys and not map_keys:
        raise ValueError(f"history has no loss or map metrics to plot; keys: {keys}")
    epochs = _series(history, "epoch") if any("epoch" in row for row in history) else np.arange(1, len(history) + 1)
    fig = _figure(10.0, 4.0)
    left, right = fig.subplots(1, 2)
    for ax, chosen, title in ((left, loss_keys, "losses"), (right, map_keys, "validation")):
        for key in chosen:
            values = _series(history, key)
            # Validation may run every few epochs: join the epochs that have it instead of leaving gaps.
            seen = np.isfinite(values)
            ax.plot(epochs[seen], values[seen], marker="o" if len(history) < 30 else None, markersize=3, label=key)
        ax.set(xlabel="epoch", title=title)
        ax.grid(True, alpha=0.3)
        if chosen:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
    if map_keys:
        right.set_ylim(0.0, 1.0)
    return _save(fig, path)


def _load_bgr(image: Image) -> npt.NDArray[np.uint8]:
    if isinstance(image, str | Path):
        loaded = cv2.imread(str(image), cv2.IMREAD_COLOR)
        if loaded is None:
            raise ValueError(f"cannot read image {image}")
        return np.asarray(loaded, dtype=np.uint8)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"images must be BGR uint8 [H, W, 3], got {arr.dtype} {list(arr.shape)}")
    return arr


def _gt_boxes(gt: GroundTruthLike) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Ground truth boxes and whether each is an ignore region."""
    boxes = np.asarray(getattr(gt, "boxes", gt), dtype=np.float64).reshape(-1, 4)
    ignore = np.asarray(getattr(gt, "ignore", np.zeros(len(boxes), bool)))
    if ignore.ndim == 2:  # ignore regions of their own (LabelledImage), not per-box flags
        regions = ignore.astype(np.float64).reshape(-1, 4)
        flags = np.concatenate([np.zeros(len(boxes), bool), np.ones(len(regions), bool)])
        return np.vstack([boxes, regions]), flags
    return boxes, ignore.astype(bool).reshape(-1)


def _unpack(sample: Sample) -> tuple[Image, npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any], GroundTruthLike]:
    if len(sample) == 5:
        image, boxes, scores, classes, gt = sample
    elif len(sample) == 3:
        image, dets, gt = sample
        boxes, scores, classes = dets.boxes, dets.scores, dets.classes
    else:
        raise ValueError(
            f"a sample is (image, detections, ground truth) or (image, boxes, scores, classes, "
            f"ground truth); got {len(sample)} items"
        )
    scores_arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    boxes_arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    classes_arr = np.asarray(classes).reshape(-1).astype(np.int64)
    if not len(boxes_arr) == len(scores_arr) == len(classes_arr):
        raise ValueError(f"{len(boxes_arr)} boxes, {len(scores_arr)} scores and {len(classes_arr)} classes differ")
    return image, boxes_arr, scores_arr, classes_arr, gt


def _draw_tile(
    sample: Sample, class_names: Sequence[str], tile_width_px: int, min_score: float, max_boxes: int
) -> npt.NDArray[np.uint8]:
    image, boxes, scores, classes, gt = _unpack(sample)
    frame = _load_bgr(image)
    scale = tile_width_px / frame.shape[1]
    tile = cv2.resize(frame, (tile_width_px, max(1, round(frame.shape[0] * scale))), interpolation=cv2.INTER_AREA)
    gt_boxes, gt_ignore = _gt_boxes(gt)
    for box, ignored in zip(gt_boxes * scale, gt_ignore, strict=True):
        x1, y1, x2, y2 = (round(v) for v in box)
        cv2.rectangle(tile, (x1, y1), (x2, y2), _IGNORE_BGR if ignored else _GT_BGR, 1, cv2.LINE_AA)
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= min_score][:max_boxes]
    boxes = boxes * scale
    for i in order:
        c = int(classes[i])
        colour = _CLASS_COLOURS_BGR[c % len(_CLASS_COLOURS_BGR)]
        x1, y1, x2, y2 = (round(v) for v in boxes[i])
        cv2.rectangle(tile, (x1, y1), (x2, y2), colour, 2, cv2.LINE_AA)
        name = class_names[c] if 0 <= c < len(class_names) else str(c)
        cv2.putText(
            tile,
            f"{name} {scores[i]:.2f}",
            (x1, max(10, y1 - 3)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.35,
            colour,
            1,
            cv2.LINE_AA,
        )
    return np.asarray(tile, dtype=np.uint8)


def sample_predictions_jpg(
    samples: Sequence[Sample],
    class_names: Sequence[str],
    path: Path,
    columns: int = 2,
    tile_width_px: int = 480,
    min_score: float = 0.25,
    max_boxes: int = 50,
) -> Path:
    """A grid of frames with predictions (coloured per class, with scores) over ground truth (white;
    ignore regions grey). Detections below ``min_score`` are left out, at most ``max_boxes`` per frame."""
    if not samples:
        raise ValueError("no samples to draw")
    if columns < 1 or tile_width_px < 32:
        raise ValueError(f"need columns >= 1 and tile_width_px >= 32, got {columns} and {tile_width_px}")
    tiles = [_draw_tile(s, class_names, tile_width_px, min_score, max_boxes) for s in samples]
    tile_height_px = max(t.shape[0] for t in tiles)
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    grid = np.zeros((rows * tile_height_px, columns * tile_width_px, 3), np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        top, left = r * tile_height_px, c * tile_width_px
        grid[top : top + tile.shape[0], left : left + tile_width_px] = tile
    path.parent.mkdir(parents=True, exist_ok=True)
    # Encoded explicitly so the file is a JPEG whatever the path's suffix.
    ok, data = cv2.imencode(".jpg", grid, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ValueError(f"cannot encode a {grid.shape[1]}x{grid.shape[0]} grid as JPEG")
    path.write_bytes(data.tobytes())
    return path
