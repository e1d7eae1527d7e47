"""Detections of a model on full images, exactly as the served detector sees them.

Each image is letterboxed to the spec's export size (aspect kept, 114 padding split on both sides,
RGB / 255), run through a forward pass (ONNX Runtime here in the daemon, the Keras body in
``trainer_worker.predict``), class-aware NMS'd, and mapped back to source pixels;
:func:`evaluate_detections` scores them with the COCO-style evaluator, ignore regions counting as
"don't care". Free of TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from kit.letterbox import letterbox
from trainer.data import LabelledImage
from trainer.evaluation import Detections, GroundTruth, Report, evaluate
from trainer.modelspec import ModelSpec

# Low enough that AP sees the whole precision/recall curve; the same as bench/accuracy.py.
SCORE_THRESHOLD = 0.01
NMS_IOU = 0.6  # the detector's default (detector/config.py)
MAX_DETECTIONS = 100
# A forward pass: NHWC [1, H, W, 3] RGB 0..1 -> the decoded head [1, 4 + nc, A].
Forward = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]


@dataclass(frozen=True)
class ImageDetections:
    path: Path
    boxes: npt.NDArray[np.float32]  # [N, 4] xyxy source pixels
    scores: npt.NDArray[np.float32]  # [N]
    classes: npt.NDArray[np.int32]  # [N]


def nms(
    output: npt.NDArray[np.float32],
    score_threshold: float = SCORE_THRESHOLD,
    iou_threshold: float = NMS_IOU,
    max_detections: int = MAX_DETECTIONS,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.int32]]:
    """One image's decoded head [4 + nc, A] -> (xyxy input-pixel boxes, scores, classes) after class-aware NMS."""
    cxcywh = output[:4].T
    scores_all = output[4:].T  # [A, nc]
    classes = scores_all.argmax(axis=1).astype(np.int32)
    scores = scores_all[np.arange(len(classes)), classes]
    keep = scores >= score_threshold
    cxcywh, scores, classes = cxcywh[keep], scores[keep], classes[keep]
    if not len(scores):
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32)
    xywh = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, 2:]], axis=1)
    # No top_k: OpenCV applies it to the candidates *before* suppression, which would leave far fewer than
    # max_detections boxes (mostly duplicates of the strongest objects) and cap the recall.
    picked = cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.tolist(), classes.tolist(), score_threshold, iou_threshold)
    idx = np.asarray(picked, np.int64).reshape(-1)[:max_detections]
    boxes = np.concatenate([xywh[idx, :2], xywh[idx, :2] + xywh[idx, 2:]], axis=1).astype(np.float32)
    return boxes, scores[idx].astype(np.float32), classes[idx]


def onnx_forward(path: Path) -> Forward:
    """The forward pass of an exported model (ONNX Runtime on CPU), for :func:`predict_with`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def forward(nhwc: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        out = session.run(None, {input_name: np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))})[0]
        return np.asarray(out, np.float32)

    return forward


def predict_with(
    forward: Forward,
    spec: ModelSpec,
    paths: Sequence[Path],
    score_threshold: float = SCORE_THRESHOLD,
    iou_threshold: float = NMS_IOU,
    max_detections: int = MAX_DETECTIONS,
) -> list[ImageDetections]:
    """Detections per image in source pixels, via the detector's letterbox at the spec's export size."""
    results = []
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot decode image {path}")
        rgb = np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.uint8)
        canvas, box = letterbox(rgb, spec.input_hw)
        output = forward(canvas[None].astype(np.float32) / 255.0)[0]
        boxes, scores, classes = nms(output, score_threshold, iou_threshold, max_detections)
        results.append(ImageDetections(Path(path), box.to_source(boxes), scores, classes))
    return results


def ground_truth(image: LabelledImage, num_classes: int) -> GroundTruth:
    """Targets plus every ignore region as a don't-care box of each class."""
    n_ignore = len(image.ignore)
    boxes = np.concatenate([image.boxes] + [image.ignore] * num_classes).reshape(-1, 4)
    classes = np.concatenate([image.classes] + [np.full(n_ignore, c, np.int32) for c in range(num_classes)])
    ignore = np.concatenate([np.zeros(len(image.boxes), bool), np.ones(n_ignore * num_classes, bool)])
    return GroundTruth.of(boxes, classes, ignore)


def evaluate_detections(
    detections: Sequence[ImageDetections],
    images: Sequence[LabelledImage],
    num_classes: int,
    min_height_px: float | None = None,
) -> Report:
    gts = [ground_truth(im, num_classes) for im in images]
    dets = [Detections.of(d.boxes, d.scores, d.classes) for d in detections]
    return evaluate(gts, dets, num_classes=num_classes, min_height_px=min_height_px)
