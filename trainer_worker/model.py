"""The trainer's model interface: a YOLOv8-family detector in Keras 3, built by ``kyolo``.

Everything outside this module sees :class:`trainer.modelspec.ModelSpec`, a body that maps NHWC RGB images in
0..1 to raw ``[P3, P4, P5]`` head maps, the loss, and the inference graph that the detector
serves (the Ultralytics YOLOv8 interchange layout: input ``images`` [N, 3, H, W] RGB 0..1,
output ``output0`` [N, 4 + nc, A] with cx, cy, w, h in input pixels and per-class scores).
kyolo stays behind this interface so a later library swap touches one file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops
from kyolo.conversion import transfer_torch_to_keras
from kyolo.losses import YOLODetectionLoss
from kyolo.models import yolov8n, yolov8s

from trainer.modelspec import REG_MAX, STRIDES, ModelSpec
from trainer_worker.checkpoint import CheckpointError, read_checkpoint


def _factory(preset: str) -> Callable[..., Any]:
    return {"n": yolov8n, "s": yolov8s}[preset]


def build_body(spec: ModelSpec) -> Any:
    """The trainable body: NHWC float RGB 0..1 of any size divisible by 32 -> raw [P3, P4, P5]."""
    return _factory(spec.preset)(nc=spec.num_classes, input_shape=(None, None, 3), data_format="channels_last")


def build_loss(spec: ModelSpec, box_gain: float = 7.5, cls_gain: float = 0.5, dfl_gain: float = 1.5) -> Any:
    """Task-aligned assignment with CIoU + DFL + BCE; targets are xyxy boxes in input pixels."""
    return YOLODetectionLoss(
        nc=spec.num_classes,
        reg_max=REG_MAX,
        strides=STRIDES,
        box_gain=box_gain,
        cls_gain=cls_gain,
        dfl_gain=dfl_gain,
        data_format="channels_last",
    )


def decode_head(feats: Sequence[Any], num_classes: int) -> Any:
    """Raw [P3, P4, P5] -> [N, 4 + nc, A]: DFL integral, boxes as cx, cy, w, h in input pixels, sigmoid scores.

    Plain keras.ops (softmax, sums, grids from static shapes) so the graph exports to ONNX
    operators that ONNX Runtime runs on every provider; no NMS in the graph (the detector does it).
    """
    no = 4 * REG_MAX + num_classes
    flat, anchor_xy, anchor_stride = [], [], []
    for f, stride in zip(feats, STRIDES, strict=True):
        h, w = int(f.shape[1]), int(f.shape[2])
        flat.append(ops.reshape(f, (-1, h * w, no)))
        gy, gx = np.meshgrid(np.arange(h, dtype=np.float32) + 0.5, np.arange(w, dtype=np.float32) + 0.5, indexing="ij")
        anchor_xy.append(np.stack([gx.ravel(), gy.ravel()], axis=-1) * stride)
        anchor_stride.append(np.full((h * w, 1), stride, np.float32))
    x = ops.concatenate(flat, axis=1)  # [N, A, no]
    anchors = ops.convert_to_tensor(np.concatenate(anchor_xy)[None])  # [1, A, 2] pixels
    strides = ops.convert_to_tensor(np.concatenate(anchor_stride)[None])  # [1, A, 1]
    dist = ops.reshape(x[..., : 4 * REG_MAX], (-1, x.shape[1], 4, REG_MAX))
    bins = ops.convert_to_tensor(np.arange(REG_MAX, dtype=np.float32).reshape(1, 1, 1, REG_MAX))
    dist = ops.sum(ops.softmax(dist, axis=-1) * bins, axis=-1) * strides  # [N, A, 4] l, t, r, b pixels
    x1y1 = anchors - dist[..., :2]
    x2y2 = anchors + dist[..., 2:]
    boxes = ops.concatenate([(x1y1 + x2y2) / 2.0, x2y2 - x1y1], axis=-1)
    scores = ops.sigmoid(x[..., 4 * REG_MAX :])
    return ops.transpose(ops.concatenate([boxes, scores], axis=-1), (0, 2, 1))


def build_inference_model(body: Any, spec: ModelSpec) -> Any:
    """The served graph: ``images`` [N, 3, H, W] RGB 0..1 -> ``output0`` [N, 4 + nc, A] (YOLOv8 layout)."""

    class ServedDetector(keras.Model):
        # A subclassed model so the decode's constants live inside call(): a functional graph
        # would turn them into extra ONNX inputs.
        def __init__(self) -> None:
            super().__init__(name="car_detector")
            self.body = body

        def call(self, images: Any) -> Any:
            feats = self.body(keras.ops.transpose(images, (0, 2, 3, 1)), training=False)
            return decode_head(feats, spec.num_classes)

    model = ServedDetector()
    model(keras.ops.zeros((1, 3, spec.input_height, spec.input_width)))
    return model


def load_ultralytics_checkpoint(body: Any, checkpoint: Path) -> int:
    """Loads an Ultralytics YOLOv8 ``.pt`` a user brings into ``body``; returns the variables transferred.

    Matched by layer name (kyolo mirrors the Ultralytics module names). When the class count differs,
    the class branch keeps its fresh initialisation (as Ultralytics does), so a COCO checkpoint
    fine-tunes to our classes; anything else that does not match is an error. Needs torch (CPU) to read the
    file, and never unpickles anything but tensors and inert module records (trainer_worker.checkpoint).
    """
    state = read_checkpoint(checkpoint)
    report = transfer_torch_to_keras(body, state, verbose=False)
    # Only the class branch (cv3) may differ: its width and outputs follow the class count.
    unexpected = [m for m in report["misses"] if ".cv3." not in str(m[1])]
    if unexpected or not report["transferred"]:
        shown = "; ".join(f"{path} <- {key} ({why})" for path, key, why in unexpected[:3])
        raise CheckpointError(
            f"{checkpoint} does not fit a YOLOv8 {getattr(body, 'name', '')} body: "
            f"{len(unexpected)} of {report['total']} variables unmatched ({shown})"
        )
    return int(report["transferred"])
