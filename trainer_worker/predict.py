"""Detections of a trained Keras body on full images: :mod:`trainer.predict` with the body's
forward pass (decoded with :func:`trainer_worker.model.decode_head`), and :func:`evaluate_on`,
the validation score training reports."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from trainer.data import LabelledImage
from trainer.evaluation import Report
from trainer.modelspec import ModelSpec
from trainer.predict import (
    MAX_DETECTIONS,
    NMS_IOU,
    SCORE_THRESHOLD,
    Forward,
    ImageDetections,
    evaluate_detections,
    predict_with,
)
from trainer_worker.model import decode_head


def forward_of(body: Any, spec: ModelSpec) -> Forward:
    @tf.function(reduce_retracing=True)
    def run(x: Any) -> Any:
        return decode_head(body(x, training=False), spec.num_classes)

    return lambda x: np.asarray(run(tf.convert_to_tensor(x)))


def predict(
    body: Any,
    spec: ModelSpec,
    paths: Sequence[Path],
    score_threshold: float = SCORE_THRESHOLD,
    iou_threshold: float = NMS_IOU,
    max_detections: int = MAX_DETECTIONS,
) -> list[ImageDetections]:
    """Detections per image in source pixels, via the detector's letterbox at the spec's export size."""
    return predict_with(forward_of(body, spec), spec, paths, score_threshold, iou_threshold, max_detections)


def evaluate_on(body: Any, spec: ModelSpec, images: list[LabelledImage], min_height_px: float | None = None) -> Report:
    """COCO-style AP of ``body`` on ``images`` at the spec's export size (ignore regions are don't-care)."""
    detections = predict(body, spec, [im.path for im in images])
    return evaluate_detections(detections, images, spec.num_classes, min_height_px)
