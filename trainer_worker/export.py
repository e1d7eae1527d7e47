"""Exports a trained body to the ONNX file the detector serves, and checks the export against Keras.

The file follows the Ultralytics YOLOv8 interchange layout that the detector and the registry
gateway already accept: one input ``images`` [batch, 3, H, W] RGB 0..1, one output ``output0``
[batch, 4 + nc, A] (cx, cy, w, h in input pixels, then per-class scores), and Ultralytics'
metadata props (``names`` as a Python dict literal, ``imgsz``, ``stride``, ``task``, ``batch``),
plus ``carmesh.*`` props describing how it was made.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import tensorflow as tf
from keras import ops
from onnx import shape_inference

from kit.hashing import sha256_file
from trainer.modelspec import REG_MAX, STRIDES, ModelSpec
from trainer_worker.model import build_inference_model

INPUT_NAME = "images"
OUTPUT_NAME = "output0"
BATCH_DIM = "batch"
# tf2onnx 1.17 converts up to opset 18; 17 is what Ultralytics exports by default and every
# recent ONNX Runtime (and Triton's onnxruntime backend) runs.
DEFAULT_OPSET = 17
PARITY_TOLERANCE = 1e-4
# Triton model names become directory names in the model repository.
_TRITON_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

FloatArray = npt.NDArray[np.float32]


class ExportError(RuntimeError):
    """The export produced a file that does not have the served layout."""


@dataclass(frozen=True)
class ExportInfo:
    path: Path
    sha256: str
    size_bytes: int
    input_hw: tuple[int, int]
    num_classes: int
    opset: int
    metadata: dict[str, str]


@dataclass(frozen=True)
class ParityReport:
    """Keras vs ONNX Runtime (CPU) on the same inputs, all differences as max over every element.

    - ``head_max_abs``: the raw [P3, P4, P5] head maps (DFL logits and class logits, NHWC), read from
      the exported graph's own intermediate tensors, one value per level;
    - ``score_max_abs``: the served output's score rows (sigmoid, 0..1);
    - ``box_max_abs`` / ``box_max_rel``: the served output's box rows (cx, cy, w, h in input pixels).
      Coordinates reach the input size, where float32's spacing alone is ~1e-4, so the relative
      difference |k - o| / max(|k|, 1) is the meaningful one for boxes.
    """

    num_images: int
    input_hw: tuple[int, int]
    head_max_abs: tuple[float, ...]
    # max |value| of each Keras head map: a diff means little when the maps themselves are tiny.
    head_max_value: tuple[float, ...]
    score_max_abs: float
    box_max_abs: float
    box_max_rel: float
    tolerance: float = PARITY_TOLERANCE
    # How far the head maps' own differences can move a box edge: a DFL edge is stride * sum(i * softmax(l)_i)
    # and moves at most (REG_MAX - 1) * stride per unit of logit difference; a width has two edges.
    box_allowance_px: float = 0.0

    @property
    def head_max_rel(self) -> tuple[float, ...]:
        """Head map diffs relative to the level's largest value (at least 1): trained class logits reach
        hundreds, where float32 rounding alone differs by more than 1e-4 between two correct runtimes."""
        return tuple(d / max(v, 1.0) for d, v in zip(self.head_max_abs, self.head_max_value, strict=True))

    @property
    def box_max_rel_input(self) -> float:
        """Box diffs relative to the input's longer side: sub-pixel differences in boxes of any size."""
        return self.box_max_abs / max(self.input_hw)

    @property
    def ok(self) -> bool:
        """The check: served scores within ``tolerance`` absolute; head maps and boxes within ``tolerance``
        relative to their magnitude (head maps: their largest value, at least 1; boxes: the input size). Boxes
        may also differ by what the agreeing head maps explain (``box_allowance_px``): an almost untrained
        model's DFL logits reach the thousands, where float32 rounding alone moves a box edge by 0.1 px."""
        box_limit_px = max(self.tolerance * max(self.input_hw), self.box_allowance_px)
        return (
            self.score_max_abs < self.tolerance
            and max(self.head_max_rel) < self.tolerance
            and self.box_max_abs < box_limit_px
        )

    def describe(self) -> str:
        heads = ", ".join(
            f"P{i + 3} {d:.2e} (values up to {v:.3g})"
            for i, (d, v) in enumerate(zip(self.head_max_abs, self.head_max_value, strict=True))
        )
        verdict = "agree" if self.ok else "DISAGREE"
        return (
            f"Keras vs ONNX Runtime on {self.num_images} image(s) {self.input_hw[1]}x{self.input_hw[0]}: "
            f"raw head maps max |diff| {heads}; scores max |diff| {self.score_max_abs:.2e}; "
            f"boxes max |diff| {self.box_max_abs:.2e} px ({self.box_max_rel_input:.1e} of the input size; the head "
            f"diffs explain up to {self.box_allowance_px:.2e} px); "
            f"{verdict} within {self.tolerance:g} (scores absolute; head maps and boxes relative)"
        )


def ultralytics_names(class_names: tuple[str, ...]) -> str:
    """``{0: 'car', 1: 'van'}``: Ultralytics writes ``str(dict)``, and the detector and registry
    gateway read it back with ``ast.literal_eval``."""
    return str(dict(enumerate(class_names)))


def onnx_metadata(spec: ModelSpec, producer: str) -> dict[str, str]:
    """The metadata props of an exported model (values are strings, as ONNX stores them)."""
    return {
        "description": f"carmesh car detector (YOLOv8{spec.preset} layout, {spec.num_classes} classes)",
        "author": producer,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        # Ultralytics' keys, with its value formats (AutoBackend parses stride/batch as int, imgsz/names as
        # Python literals); batch is the export batch, 1 here although the batch dimension is dynamic.
        "stride": str(max(STRIDES)),
        "task": "detect",
        "batch": "1",
        "imgsz": str([spec.input_height, spec.input_width]),
        "names": ultralytics_names(spec.class_names),
        "carmesh.preset": spec.preset,
        "carmesh.family": "yolov8",
        "carmesh.class_names": json.dumps(list(spec.class_names)),
        "carmesh.input_width": str(spec.input_width),
        "carmesh.input_height": str(spec.input_height),
        "carmesh.input": "RGB 0..1, letterboxed (centred, pad 114/255)",
        "carmesh.precision": "float32",
    }


def _rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new


def _postprocess(model: onnx.ModelProto, spec: ModelSpec, metadata: dict[str, str]) -> None:
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ExportError(
            f"expected one input and one output, got inputs {[i.name for i in graph.input]} "
            f"and outputs {[o.name for o in graph.output]}"
        )
    _rename_tensor(graph, graph.input[0].name, INPUT_NAME)
    _rename_tensor(graph, graph.output[0].name, OUTPUT_NAME)
    expected = {
        INPUT_NAME: (3, spec.input_height, spec.input_width),
        OUTPUT_NAME: (4 + spec.num_classes, spec.anchors()),
    }
    for value in (graph.input[0], graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        static = tuple(d.dim_value for d in dims[1:])
        if static != expected[value.name]:
            raise ExportError(f"{value.name} has dims {static} after the batch, expected {expected[value.name]}")
        # One shared symbol tells readers that input and output batch sizes are the same.
        dims[0].ClearField("dim_value")
        dims[0].dim_param = BATCH_DIM
    del model.metadata_props[:]
    for key, text in metadata.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, text


def export_onnx(
    body: Any, spec: ModelSpec, path: Path, producer: str = "carmesh-trainer", opset: int = DEFAULT_OPSET
) -> ExportInfo:
    """Writes the served graph of ``body`` to ``path`` (atomically) and returns what was written."""
    model = build_inference_model(body, spec)
    signature = [tf.TensorSpec((None, 3, spec.input_height, spec.input_width), tf.float32, name=INPUT_NAME)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="carmesh-export-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        model.export(str(raw), format="onnx", input_signature=signature, opset_version=opset, verbose=False)
        proto = onnx.load(str(raw))
    metadata = onnx_metadata(spec, producer)
    _postprocess(proto, spec, metadata)
    proto.producer_name = producer
    onnx.checker.check_model(proto)
    partial = path.with_name(path.name + ".partial")
    onnx.save(proto, str(partial))
    os.replace(partial, path)
    return ExportInfo(
        path=path,
        sha256=sha256_file(path),
        size_bytes=path.stat().st_size,
        input_hw=spec.input_hw,
        num_classes=spec.num_classes,
        opset=opset,
        metadata=metadata,
    )


def _dims(value: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    return tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim
    )


def _head_tensors(model: onnx.ModelProto, spec: ModelSpec) -> list[tuple[onnx.ValueInfoProto, bool]]:
    """The graph's tensors holding the raw head map of each level, and whether each is NCHW.

    The decode reshapes each NHWC level map [N, h, w, 4*REG_MAX + nc]; tf2onnx keeps that tensor
    (a Transpose of the NCHW conv output feeding a Reshape), so shape inference finds it by shape.
    """
    inferred = shape_inference.infer_shapes(model)
    consumers: dict[str, set[str]] = {}
    for node in inferred.graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    channels = 4 * REG_MAX + spec.num_classes
    found: list[tuple[onnx.ValueInfoProto, bool]] = []
    for stride in STRIDES:
        h, w = spec.input_height // stride, spec.input_width // stride
        nhwc = [v for v in inferred.graph.value_info if _dims(v)[1:] == (h, w, channels)]
        nchw = [v for v in inferred.graph.value_info if _dims(v)[1:] == (channels, h, w)]
        if len(nhwc) > 1:
            nhwc = [v for v in nhwc if "Reshape" in consumers.get(v.name, set())]
        if len(nhwc) == 1:
            found.append((nhwc[0], False))
        elif len(nchw) == 1:
            found.append((nchw[0], True))
        else:
            raise ExportError(
                f"cannot find the stride-{stride} head map [N, {h}, {w}, {channels}] in the exported graph "
                f"({len(nhwc)} NHWC and {len(nchw)} NCHW candidates)"
            )
    return found


def _session(model: bytes | str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def _max_abs(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def check_parity(
    body: Any, spec: ModelSpec, onnx_path: Path, images: npt.NDArray[Any] | None = None, seed: int = 0
) -> ParityReport:
    """Runs ``images`` ([N, 3, H, W] RGB 0..1, e.g. letterboxed frames; default: 2 seeded random
    images) through Keras and through ONNX Runtime on the file at ``onnx_path``."""
    if images is None:
        images = np.random.default_rng(seed).random((2, 3, spec.input_height, spec.input_width), dtype=np.float32)
    batch = np.ascontiguousarray(images, dtype=np.float32)
    if batch.ndim != 4 or batch.shape[1:] != (3, spec.input_height, spec.input_width):
        raise ValueError(f"images must be [N, 3, {spec.input_height}, {spec.input_width}], got {list(batch.shape)}")

    served_keras = np.asarray(build_inference_model(body, spec)(batch))
    heads_keras = [np.asarray(f) for f in body(ops.transpose(batch, (0, 2, 3, 1)), training=False)]

    served_onnx = np.asarray(_session(str(onnx_path)).run([OUTPUT_NAME], {INPUT_NAME: batch})[0])
    # The raw maps come from the same graph with its level tensors exposed as extra outputs; the
    # served output above comes from the file exactly as written.
    model = onnx.load(str(onnx_path))
    heads = _head_tensors(model, spec)
    for value, _ in heads:
        model.graph.output.append(value)
    outs = _session(model.SerializeToString()).run([v.name for v, _ in heads], {INPUT_NAME: batch})
    heads_onnx = [np.transpose(o, (0, 2, 3, 1)) if nchw else o for o, (_, nchw) in zip(outs, heads, strict=True)]

    if served_onnx.shape != served_keras.shape:
        raise ExportError(f"ONNX output {served_onnx.shape} differs in shape from Keras {served_keras.shape}")
    box_diff = np.abs(served_keras[:, :4].astype(np.float64) - served_onnx[:, :4])
    box_rel = box_diff / np.maximum(np.abs(served_keras[:, :4].astype(np.float64)), 1.0)
    head_max_abs = tuple(_max_abs(k, o) for k, o in zip(heads_keras, heads_onnx, strict=True))
    return ParityReport(
        num_images=int(batch.shape[0]),
        input_hw=spec.input_hw,
        head_max_abs=head_max_abs,
        head_max_value=tuple(float(np.max(np.abs(k))) for k in heads_keras),
        score_max_abs=_max_abs(served_keras[:, 4:], served_onnx[:, 4:]),
        box_max_abs=float(box_diff.max()),
        box_max_rel=float(box_rel.max()),
        box_allowance_px=max(2 * (REG_MAX - 1) * s * d for s, d in zip(STRIDES, head_max_abs, strict=True)),
    )


def triton_config(spec: ModelSpec, model_name: str, max_batch_size: int = 8) -> str:
    """``config.pbtxt`` for Triton's ``onnxruntime_onnx`` platform, in the registry gateway's format:
    dynamic batch (Triton adds the batch dimension, so dims leave it out) with dynamic batching."""
    if not _TRITON_NAME.match(model_name):
        raise ValueError(
            f"Triton model name {model_name!r} must be 1-128 characters of letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1 for a dynamic-batch model, got {max_batch_size}")

    def tensor(name: str, dims: tuple[int, ...]) -> str:
        return (
            f'  {{\n    name: "{name}"\n    data_type: TYPE_FP32\n    dims: [ {", ".join(str(d) for d in dims)} ]\n  }}'
        )

    lines = [
        f'name: "{model_name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        "input [",
        tensor(INPUT_NAME, (3, spec.input_height, spec.input_width)),
        "]",
        "output [",
        tensor(OUTPUT_NAME, (4 + spec.num_classes, spec.anchors())),
        "]",
        "dynamic_batching { }",
        "instance_group [ { kind: KIND_AUTO } ]",
    ]
    return "\n".join(lines) + "\n"
