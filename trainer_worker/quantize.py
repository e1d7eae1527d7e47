"""INT8 export: static post-training quantization of an exported float32 model (ONNX Runtime, QDQ).

Every convolution, activation and pooling of the body becomes an int8 QDQ pair that ONNX Runtime's
CPU provider fuses into integer kernels (VNNI where the CPU has it); the head's output convolutions
(box and class logits) and the decode after them (DFL softmax, box arithmetic, the sigmoid scores and
the concat of boxes in pixels with scores in 0..1) stay float32: one uint8 scale cannot hold both
ranges of that concat (quantizing the decode scored 0 AP). Activation ranges are calibrated (min/max)
on training frames prepared exactly as the detector prepares a request. Measured on apollo-cars val
with a 28-minute job (docs/benchmarks.md): 2.2x float32's images/s on 2 cores at 960x544, car AP50 within 0.002.

Needs only onnx and onnxruntime (no TensorFlow), so benchmarks can quantize any exported model.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx

from kit.hashing import sha256_file
from kit.letterbox import letterbox

PRECISION_KEY = "carmesh.precision"
FLOAT32 = "float32"
INT8 = "int8"
PRECISIONS = (FLOAT32, INT8)
# Frames that calibrate the activation ranges: min/max settles within a few dozen frames of one
# domain (32 and 64 gave the same AP here), and each costs one float32 forward pass.
CALIBRATION_FRAMES = 32


class QuantizeError(RuntimeError):
    """The model cannot be quantized (no calibration frames, unreadable images, no convolution)."""


@dataclass(frozen=True)
class QuantizedModel:
    path: Path
    sha256: str
    size_bytes: int
    calibration_frames: int
    float_tail_nodes: int  # nodes of the head left in float32 (its output convolutions and the decode)


def calibration_inputs(paths: Sequence[Path], input_hw: tuple[int, int]) -> Iterator[np.ndarray]:
    """[1, 3, H, W] RGB 0..1 letterboxed tensors, as the detector and the trainer's evaluation build them."""
    for path in paths:
        bgr: Any = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise QuantizeError(f"cannot decode calibration image {path.name}")
        canvas = letterbox(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), input_hw)[0]
        yield (canvas.transpose(2, 0, 1).astype(np.float32) / 255.0)[None]


def float_tail(model: onnx.ModelProto) -> list[str]:
    """The nodes that stay float32: those between the last convolutions and the outputs (walked back from
    each output, stopping at every Conv), which decode the head, and the head's own output convolutions
    that feed them (the box and class logits; 6 small convolutions for YOLOv8: 4% of int8's speed, and
    car AP50 0.700 / 0.879 for cars >= 40 px against 0.697 / 0.877 when they are int8 too)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    tail: set[str] = set()
    logits: set[str] = set()
    stack = [o.name for o in model.graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in tail or node.name in logits:
            continue
        if node.op_type == "Conv":
            logits.add(node.name)
            continue
        tail.add(node.name)
        stack.extend(node.input)
    return sorted(tail | logits)


def quantize_int8(
    src: Path, dst: Path, calibration: Sequence[Path], frames: int = CALIBRATION_FRAMES
) -> QuantizedModel:
    """Writes the int8 version of the float32 model ``src`` to ``dst`` (metadata kept, plus
    ``carmesh.precision``), calibrated on the first ``frames`` of ``calibration``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    chosen = list(calibration)[:frames]
    if not chosen:
        raise QuantizeError("int8 export needs calibration frames and the training split has none")
    source = onnx.load(str(src))
    if not any(node.op_type == "Conv" for node in source.graph.node):
        raise QuantizeError(f"{src.name} has no convolution to quantize")
    dims = source.graph.input[0].type.tensor_type.shape.dim
    input_hw = (dims[2].dim_value, dims[3].dim_value)
    input_name = source.graph.input[0].name

    class _Frames(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._inputs = calibration_inputs(chosen, input_hw)

        def get_next(self) -> dict[str, np.ndarray] | None:
            tensor = next(self._inputs, None)
            return None if tensor is None else {input_name: tensor}

    with tempfile.TemporaryDirectory(prefix="carmesh-quantize-") as tmp:
        # Shape inference and constant folding first, as ONNX Runtime recommends before quantizing.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        tail = float_tail(onnx.load(str(prepared)))
        written = Path(tmp) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(written),
            _Frames(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=tail,
        )
        model = onnx.load(str(written))
    del model.metadata_props[:]
    for prop in source.metadata_props:
        if prop.key != PRECISION_KEY:
            model.metadata_props.add(key=prop.key, value=prop.value)
    model.metadata_props.add(key=PRECISION_KEY, value=INT8)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return QuantizedModel(dst, sha256_file(dst), dst.stat().st_size, len(chosen), len(tail))
