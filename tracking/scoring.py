"""Tracking accuracy against ground truth with ``motmetrics`` (CLEAR MOT and identity metrics)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tracking.core import Track
from tracking.scenario import TruthBox

# A hypothesis matches a true box when their IoU is at least 0.5 (the MOT challenge's rule).
MATCH_IOU = 0.5


@dataclass(frozen=True)
class Scores:
    mota: float
    idf1: float
    id_switches: int
    precision: float
    recall: float
    true_objects: int
    frames: int


def iou_distances(truth: np.ndarray, hypotheses: np.ndarray) -> np.ndarray:
    """1 - IoU of [N, 4] and [M, 4] xyxy boxes, NaN (no match allowed) below ``MATCH_IOU``.
    motmetrics' own ``iou_matrix`` calls ``np.asfarray``, which NumPy 2 removed."""
    x1 = np.maximum(truth[:, None, 0], hypotheses[None, :, 0])
    y1 = np.maximum(truth[:, None, 1], hypotheses[None, :, 1])
    x2 = np.minimum(truth[:, None, 2], hypotheses[None, :, 2])
    y2 = np.minimum(truth[:, None, 3], hypotheses[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_t = (truth[:, 2] - truth[:, 0]) * (truth[:, 3] - truth[:, 1])
    area_h = (hypotheses[:, 2] - hypotheses[:, 0]) * (hypotheses[:, 3] - hypotheses[:, 1])
    union = area_t[:, None] + area_h[None, :] - inter
    distance = 1.0 - np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    distance[distance > 1 - MATCH_IOU] = np.nan
    return distance


def score(truth: Sequence[Sequence[TruthBox]], tracks: Sequence[Sequence[Track]], min_visibility: float) -> Scores:
    """Scores per-frame tracks against the truth boxes at least ``min_visibility`` visible."""
    import motmetrics as mm

    if len(truth) != len(tracks):
        raise ValueError(f"{len(truth)} frames of truth but {len(tracks)} of tracks")
    accumulator = mm.MOTAccumulator(auto_id=True)
    for truths, hypotheses in zip(truth, tracks, strict=True):
        kept = [t for t in truths if t.visibility >= min_visibility]
        distances = iou_distances(
            np.array([t.box_xyxy for t in kept], np.float64).reshape(-1, 4),
            np.array([h.box_xyxy for h in hypotheses], np.float64).reshape(-1, 4),
        )
        accumulator.update([t.identity for t in kept], [h.track_id for h in hypotheses], distances)
    summary = mm.metrics.create().compute(
        accumulator,
        metrics=["mota", "idf1", "num_switches", "precision", "recall", "num_unique_objects", "num_frames"],
    )
    row = summary.iloc[0]
    return Scores(
        mota=float(row["mota"]),
        idf1=float(row["idf1"]),
        id_switches=int(row["num_switches"]),
        precision=float(row["precision"]),
        recall=float(row["recall"]),
        true_objects=int(row["num_unique_objects"]),
        frames=int(row["num_frames"]),
    )
