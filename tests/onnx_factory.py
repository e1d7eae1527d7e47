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
    raw: np.ndarray, input_hw: tuple[int, int], names: list[str] | None, output_name: str, opset: int = 17
) -> onnx.ModelProto:
    height, width = input_hw
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, height, width])
    out_shape = ["batch", *raw.shape[1:]]
    output = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, out_shape)
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=1, axes=[1, 2, 3])
        if opset < 18
        else helper.make_node("ReduceMean", ["images", "axes"], ["mean"], keepdims=1),
        helper.make_node("Mul", ["mean", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "raw"], [output_name]),
    ]
    inits = [
        numpy_helper.from_array(np.zeros((1, 1, 1), np.float32).reshape(1, 1, 1), "zero"),
        numpy_helper.from_array(raw.astype(np.float32), "raw"),
    ]
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"))
    # ReduceMean of [N,3,H,W] over 1..3 with keepdims gives [N,1,1,1]; squeeze one axis for rank 3.
    nodes.insert(1, helper.make_node("Squeeze", ["mean", "sq_axes"], ["mean3"]))
    nodes[2] = helper.make_node("Mul", ["mean3", "zero"], ["zeros"])
    inits.append(numpy_helper.from_array(np.array([3], np.int64), "sq_axes"))
    graph = helper.make_graph(nodes, "carmesh_test_detector", [images], [output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    if names is not None:
        entry = model.metadata_props.add()
        entry.key = "names"
        entry.value = str({i: n for i, n in enumerate(names)})
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
