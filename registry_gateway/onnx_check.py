"""Checks that an ONNX file is a detector of the declared family, and reads what the registry
records about it (input size, class names, tensor specs for the Triton config)."""

from __future__ import annotations

import ast
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort

from registry_gateway.errors import BadModel
from registry_gateway.schema import Family

log = logging.getLogger(__name__)

# YOLOX heads predict on these strides; the anchor count is the total number of grid cells.
YOLOX_STRIDES = (8, 16, 32)
_FAMILY_LAYOUT = {
    Family.YOLOV8: "input [N,3,H,W], output [N,4+nc,A]",
    Family.YOLOX: "input [N,3,H,W], output [N,A,5+nc] with A = sum over strides 8/16/32 of (H/s)*(W/s)",
}

Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    name: str
    # onnxruntime's type string, e.g. "tensor(float)".
    type: str
    # Static dims as ints, symbolic or unknown ones as their name (or "?").
    shape: tuple[Dim, ...]


@dataclass(frozen=True)
class DetectorSpec:
    family: Family
    class_names: tuple[str, ...]
    input_width: int
    input_height: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def dynamic_batch(self) -> bool:
        return not isinstance(self.inputs[0].shape[0], int)


def parse_names(raw: str) -> tuple[str, ...]:
    """Reads the ``names`` metadata Ultralytics writes: ``"{0: 'person', 1: 'bicycle'}"`` (or a list)."""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise BadModel(f"ONNX metadata 'names' is not a Python dict or list literal: {exc}") from exc
    if isinstance(value, dict):
        if set(value) != set(range(len(value))):
            raise BadModel(
                f"ONNX metadata 'names' must map class ids 0..{len(value) - 1} to names; got keys {list(value)!r}"
            )
        return tuple(str(value[i]) for i in range(len(value)))
    if isinstance(value, list | tuple):
        return tuple(str(v) for v in value)
    raise BadModel(f"ONNX metadata 'names' must be a dict or list, got {type(value).__name__}")


def check_class_names(names: Sequence[str]) -> tuple[str, ...]:
    cleaned = tuple(names)
    if any(not n.strip() for n in cleaned):
        raise BadModel("class names must not be empty strings")
    duplicates = sorted({n for n in cleaned if cleaned.count(n) > 1})
    if duplicates:
        raise BadModel(f"class names must be unique; repeated: {', '.join(duplicates)}")
    return cleaned


def _spec(arg: ort.NodeArg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else (str(d) if d else "?") for d in (arg.shape or ()))
    return TensorSpec(name=arg.name, type=arg.type, shape=shape)


def _fmt(spec: TensorSpec) -> str:
    return f"'{spec.name}' {list(spec.shape)}"


def _load(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], dict[str, str]]:
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise BadModel(f"not a valid ONNX model: {str(exc).strip()[:300]}") from exc
    options = ort.SessionOptions()
    # Loading is all we need: skip optimisation and keep to one thread on a shared host.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BadModel(f"onnxruntime cannot load the model: {str(exc).strip()[:300]}") from exc
    inputs = tuple(_spec(a) for a in session.get_inputs())
    outputs = tuple(_spec(a) for a in session.get_outputs())
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    return inputs, outputs, metadata


def _input_hw(family: Family, inputs: tuple[TensorSpec, ...]) -> tuple[int, int]:
    if len(inputs) != 1:
        raise BadModel(f"a {family.name} detector has one input; this model has {', '.join(map(_fmt, inputs))}")
    image = inputs[0]
    if image.type not in ("tensor(float)", "tensor(float16)"):
        raise BadModel(f"input {_fmt(image)} is {image.type}; expected float32 or float16 images")
    if len(image.shape) != 4 or image.shape[1] != 3:
        raise BadModel(f"input {_fmt(image)} must be [N,3,H,W]")
    height, width = image.shape[2], image.shape[3]
    if not (isinstance(height, int) and isinstance(width, int)) or height <= 0 or width <= 0:
        raise BadModel(f"input {_fmt(image)} must have a static height and width (re-export with a fixed imgsz)")
    return height, width


def _single_output(family: Family, outputs: tuple[TensorSpec, ...]) -> TensorSpec:
    if len(outputs) != 1:
        raise BadModel(
            f"a {family.name} detector has one output ({_FAMILY_LAYOUT[family]}); "
            f"this model has {', '.join(map(_fmt, outputs))}"
        )
    out = outputs[0]
    if len(out.shape) != 3:
        raise BadModel(f"output {_fmt(out)} must have rank 3 for {family.name} ({_FAMILY_LAYOUT[family]})")
    return out


def _num_classes(family: Family, out: TensorSpec, height: int, width: int) -> int:
    if family is Family.YOLOV8:
        channels, anchors = out.shape[1], out.shape[2]
        if not isinstance(channels, int) or channels <= 4:
            raise BadModel(f"output {_fmt(out)} must be [N,4+nc,A] with a static 4+nc > 4 for YOLOV8")
        return channels - 4
    anchors, channels = out.shape[1], out.shape[2]
    if not isinstance(channels, int) or channels <= 5:
        raise BadModel(f"output {_fmt(out)} must be [N,A,5+nc] with a static 5+nc > 5 for YOLOX")
    if height % 32 or width % 32:
        raise BadModel(f"YOLOX input size {width}x{height} must be a multiple of 32")
    expected = sum((height // s) * (width // s) for s in YOLOX_STRIDES)
    if anchors != expected:
        hint = " (it looks like YOLOV8's [N,4+nc,A])" if isinstance(anchors, int) and anchors < channels else ""
        raise BadModel(
            f"output {_fmt(out)} must be [N,A,5+nc] with A={expected} for a {width}x{height} YOLOX input "
            f"(strides 8/16/32){hint}"
        )
    return channels - 5


def _class_names(
    given: Sequence[str], metadata: dict[str, str], nc: int, family: Family, out: TensorSpec
) -> tuple[str, ...]:
    if given:
        names, origin = check_class_names(given), "the request"
    elif "names" in metadata:
        names, origin = check_class_names(parse_names(metadata["names"])), "the ONNX metadata 'names'"
    else:
        raise BadModel(
            f"class names are required: the {family.name} model has {nc} classes and no 'names' metadata; "
            "send class_names in the import metadata"
        )
    if len(names) != nc:
        raise BadModel(
            f"the model predicts {nc} classes but {origin} lists {len(names)} class names "
            f"(output {_fmt(out)} read as {family.name}: {_FAMILY_LAYOUT[family]}; wrong family?)"
        )
    return names


def detect_family(inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> Family:
    """Tells the family from the tensor layout: YOLOX's anchor count is fixed by its input size,
    so a layout that fits it is YOLOX; otherwise a [N,4+nc,A] output with 4+nc < A is YOLOV8."""
    reasons: list[str] = []
    for family in (Family.YOLOX, Family.YOLOV8):
        try:
            height, width = _input_hw(family, inputs)
            out = _single_output(family, outputs)
            _num_classes(family, out, height, width)
        except BadModel as exc:
            reasons.append(f"not {family.name}: {exc}")
            continue
        channels, anchors = out.shape[1], out.shape[2]
        if family is Family.YOLOV8 and not (
            isinstance(channels, int) and isinstance(anchors, int) and channels < anchors
        ):
            reasons.append(f"not {family.name}: output {_fmt(out)} has more channels than anchors")
            continue
        return family
    raise BadModel(
        "cannot tell the model family from its layout; set it explicitly (MODEL_FAMILY_YOLOV8 or "
        "MODEL_FAMILY_YOLOX; CLI --family yolov8|yolox): " + "; ".join(reasons)
    )


def inspect_detector(path: Path, family: Family | None, class_names: Sequence[str] = ()) -> DetectorSpec:
    """Loads ``path`` and checks it against ``family`` (None: detect it from the layout);
    raises :class:`BadModel` with the reason."""
    inputs, outputs, metadata = _load(path)
    if family is None:
        family = detect_family(inputs, outputs)
    height, width = _input_hw(family, inputs)
    out = _single_output(family, outputs)
    if isinstance(inputs[0].shape[0], int) != isinstance(out.shape[0], int):
        raise BadModel(f"input {_fmt(inputs[0])} and output {_fmt(out)} disagree on whether the batch is dynamic")
    nc = _num_classes(family, out, height, width)
    names = _class_names(class_names, metadata, nc, family, out)
    return DetectorSpec(
        family=family,
        class_names=names,
        input_width=width,
        input_height=height,
        inputs=inputs,
        outputs=outputs,
    )
