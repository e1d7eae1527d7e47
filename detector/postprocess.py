"""Detection post-processing, the one place it lives: family decoders, score threshold,
class filter, class-aware NMS, and rescaling to source-image pixels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kit.letterbox import Letterbox

YOLOX_STRIDES = (8, 16, 32)
# Candidates kept for NMS after the score threshold; bounds its cost on degenerate outputs.
MAX_NMS_CANDIDATES = 10_000


@dataclass(frozen=True)
class PostprocessParams:
    score_threshold: float
    iou_threshold: float
    max_detections: int
    # Model class indices to keep; None keeps all.
    class_ids: frozenset[int] | None = None


@dataclass(frozen=True)
class Detections:
    """Boxes [K, 4] x1,y1,x2,y2 in source-image pixels, scores [K], class ids [K]; best first."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def _cxcywh_to_xyxy(cxcywh: np.ndarray) -> np.ndarray:
    half = cxcywh[:, 2:4] / 2
    return np.concatenate([cxcywh[:, 0:2] - half, cxcywh[:, 0:2] + half], axis=1)


def expected_anchors_yolox(input_hw: tuple[int, int], strides: Sequence[int] = YOLOX_STRIDES) -> int:
    height, width = input_hw
    return sum((height // s) * (width // s) for s in strides)


def yolox_grid(input_hw: tuple[int, int], strides: Sequence[int] = YOLOX_STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Grid cell (x, y) [A, 2] and stride [A, 1] per anchor, in YOLOX's order (stride, then row, then column)."""
    height, width = input_hw
    grids, steps = [], []
    for stride in strides:
        ys, xs = np.meshgrid(np.arange(height // stride), np.arange(width // stride), indexing="ij")
        cells = np.stack([xs, ys], axis=-1).reshape(-1, 2)
        grids.append(cells)
        steps.append(np.full((cells.shape[0], 1), stride))
    return np.concatenate(grids).astype(np.float32), np.concatenate(steps).astype(np.float32)


def decode_yolov8(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One image's output [4+nc, A] -> boxes xyxy in input pixels [A, 4] and class scores [A, nc]."""
    rows = raw.T
    return _cxcywh_to_xyxy(rows[:, :4]), rows[:, 4:]


def decode_yolox(raw: np.ndarray, input_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One image's raw grid output [A, 5+nc] -> boxes xyxy in input pixels [A, 4] and obj*cls scores [A, nc]."""
    grid, stride = yolox_grid(input_hw)
    if raw.shape[0] != grid.shape[0]:
        raise ValueError(f"YOLOX output has {raw.shape[0]} anchors, input {input_hw} implies {grid.shape[0]}")
    centers = (raw[:, 0:2] + grid) * stride
    # Clip before exp so a wild logit cannot overflow to inf and poison NMS.
    sizes = np.exp(np.clip(raw[:, 2:4], -50.0, 50.0)) * stride
    boxes = _cxcywh_to_xyxy(np.concatenate([centers, sizes], axis=1))
    return boxes, raw[:, 4:5] * raw[:, 5:]


def nms(
    boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float, max_keep: int
) -> np.ndarray:
    """Class-aware greedy NMS: indices kept, best first. A box is dropped when its IoU with a
    better box of the same class is above ``iou_threshold``."""
    if scores.size == 0:
        return np.zeros(0, np.int64)
    # Shift each class to its own region so one pass never compares boxes of different classes.
    span = float(np.abs(boxes).max()) * 2 + 1
    shifted = boxes + (class_ids.astype(np.float64) * span)[:, None]
    x1, y1, x2, y2 = shifted.T
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_keep:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        inter_w = np.clip(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0, None)
        inter_h = np.clip(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0, None)
        inter = inter_w * inter_h
        union = areas[best] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)


def postprocess(
    raw: np.ndarray, family: str, input_hw: tuple[int, int], box: Letterbox, params: PostprocessParams
) -> Detections:
    """One image's raw model output -> its detections in source pixels."""
    if family == "yolov8":
        boxes, class_scores = decode_yolov8(raw)
    elif family == "yolox":
        boxes, class_scores = decode_yolox(raw, input_hw)
    else:
        raise ValueError(f"unknown model family {family!r}")
    class_ids = class_scores.argmax(axis=1) if class_scores.shape[1] else np.zeros(len(boxes), np.int64)
    scores = class_scores.max(axis=1) if class_scores.shape[1] else np.zeros(len(boxes), np.float32)
    mask = np.isfinite(scores) & (scores >= params.score_threshold) & np.isfinite(boxes).all(axis=1)
    if params.class_ids is not None:
        mask &= np.isin(class_ids, np.fromiter(params.class_ids, np.int64, len(params.class_ids)))
    idx = np.flatnonzero(mask)
    if idx.size > MAX_NMS_CANDIDATES:
        idx = idx[np.argsort(-scores[idx], kind="stable")[:MAX_NMS_CANDIDATES]]
    boxes, scores, class_ids = boxes[idx], scores[idx], class_ids[idx]
    keep = nms(boxes, scores, class_ids, params.iou_threshold, params.max_detections)
    return Detections(
        boxes=box.to_source(boxes[keep]),
        scores=scores[keep].astype(np.float32),
        class_ids=class_ids[keep].astype(np.int64),
    )
