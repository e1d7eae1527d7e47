"""Small ONNX detectors built in the tests, so no third-party weights are needed.

Each model ignores its pixels except for shape (``0 * mean(images)`` keeps the batch
dimension dynamic) and returns a fixed raw output, so decoders and the whole serving
path can be checked against hand-computed boxes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _constant_model(
    raw: np.ndarray, input_hw: tuple[int, int], names: list[str] | None, output_name: str
) -> onnx.ModelProto:
    height, width = input_hw
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, height, width])
    output = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", *raw.shape[1:]])
    nodes = [
        # mean over C,H,W -> [N,1,1,1] -> [N,1,1]; times 0 plus raw broadcasts to [N, *raw.shape[1:]].
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=1, axes=[1, 2, 3]),
        helper.make_node("Squeeze", ["mean", "squeeze_axes"], ["mean3"]),
        helper.make_node("Mul", ["mean3", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "raw"], [output_name]),
    ]
    inits = [
        numpy_helper.from_array(np.array([3], np.int64), "squeeze_axes"),
        numpy_helper.from_array(np.zeros((1, 1, 1), np.float32), "zero"),
        numpy_helper.from_array(raw.astype(np.float32), "raw"),
    ]
    graph = helper.make_graph(nodes, "carmesh_test_detector", [images], [output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if names is not None:
        entry = model.metadata_props.add()
        entry.key = "names"
        entry.value = str(dict(enumerate(names)))
    onnx.checker.check_model(model)
    return model


def yolov8_raw(
    boxes_cxcywh: list[tuple[float, float, float, float]], scores: list[list[float]], anchors: int | None = None
) -> np.ndarray:
    """Raw YOLOv8 output [1, 4+nc, A]: one anchor per given box, the rest zero-score."""
    nc = len(scores[0])
    count = anchors or len(boxes_cxcywh)
    raw = np.zeros((1, 4 + nc, count), np.float32)
    for i, (box, cls_scores) in enumerate(zip(boxes_cxcywh, scores, strict=True)):
        raw[0, :4, i] = box
        raw[0, 4:, i] = cls_scores
    return raw


def write_yolov8_model(
    path: Path, raw: np.ndarray, input_hw: tuple[int, int] = (64, 64), names: list[str] | None = None
) -> Path:
    """A YOLOv8-layout model (input ``images``, output ``output0``) returning ``raw``."""
    model = _constant_model(raw, input_hw, names, "output0")
    onnx.save(model, str(path))
    return path


def write_yolox_model(path: Path, raw: np.ndarray, input_hw: tuple[int, int] = (64, 64)) -> Path:
    """A YOLOX-layout model (raw grid outputs [1, A, 5+nc], no names metadata) returning ``raw``."""
    model = _constant_model(raw, input_hw, None, "output")
    onnx.save(model, str(path))
    return path


def write_failing_yolov8_model(
    path: Path, raw: np.ndarray, input_hw: tuple[int, int] = (64, 64), names: list[str] | None = None
) -> Path:
    """Like :func:`write_yolov8_model`, but inference fails at run time (a Gather index out of
    bounds) when the batch's mean pixel is over 0.9 (a white image): loading and the gray warm-up
    succeed, so the detector serves it and only bright frames fail, as a runtime fault would."""
    height, width = input_hw
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, height, width])
    output = helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", *raw.shape[1:]])
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=1, axes=[1, 2, 3]),
        helper.make_node("Squeeze", ["mean", "squeeze_axes"], ["mean3"]),
        helper.make_node("Mul", ["mean3", "zero"], ["zeros"]),
        # index = 7 * (mean > 0.9): row 0 of the one-row raw output, or a row that does not exist.
        helper.make_node("ReduceMax", ["mean"], ["overall"], keepdims=0),
        helper.make_node("Greater", ["overall", "threshold"], ["bright"]),
        helper.make_node("Cast", ["bright"], ["flag"], to=TensorProto.INT64),
        helper.make_node("Mul", ["flag", "seven"], ["index"]),
        helper.make_node("Unsqueeze", ["index", "unsqueeze_axes"], ["indices"]),
        helper.make_node("Gather", ["raw", "indices"], ["picked"], axis=0),
        helper.make_node("Add", ["zeros", "picked"], ["output0"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([3], np.int64), "squeeze_axes"),
        numpy_helper.from_array(np.array([0], np.int64), "unsqueeze_axes"),
        numpy_helper.from_array(np.zeros((1, 1, 1), np.float32), "zero"),
        numpy_helper.from_array(np.array(0.9, np.float32), "threshold"),
        numpy_helper.from_array(np.array(7, np.int64), "seven"),
        numpy_helper.from_array(raw.astype(np.float32), "raw"),
    ]
    graph = helper.make_graph(nodes, "carmesh_failing_detector", [images], [output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if names is not None:
        entry = model.metadata_props.add()
        entry.key = "names"
        entry.value = str(dict(enumerate(names)))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
