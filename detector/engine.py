"""One loaded ONNX model: the Runtime session, its input geometry, preprocessing and batched runs."""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import onnxruntime as ort

from detector.devices import check_session
from detector.errors import ModelLoadError
from detector.postprocess import expected_anchors_yolox
from kit.letterbox import Letterbox, letterbox

log = logging.getLogger(__name__)

FAMILIES = ("yolov8", "yolox")


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    alias: str = ""

    def __str__(self) -> str:
        return f"{self.name} v{self.version}" + (f" (@{self.alias})" if self.alias else "")


@dataclass(frozen=True)
class ModelSpec:
    """What is known about a model before its file is opened (from the registry or settings)."""

    ref: ModelRef
    family: str
    # Empty: take them from the file's `names` metadata.
    class_names: tuple[str, ...] = ()
    # Used only when the ONNX input's height/width are dynamic.
    input_hw: tuple[int, int] = (640, 640)
    sha256: str = ""


@dataclass(frozen=True)
class ModelIO:
    """The model's tensors as its ONNX file declares them (None: a dynamic dimension)."""

    input_name: str
    input_dtype: type
    input_shape: tuple[int | None, ...]
    output_name: str
    output_shape: tuple[int | None, ...]


class InferenceBackend(Protocol):
    """Where a preprocessed batch runs when not in this process's ONNX Runtime session
    (detector/triton.py: a Triton server). Called from several inference threads at once."""

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def describe(self) -> list[str]: ...

    def takes_any_batch(self) -> bool:
        """Whether a batch of any size may go in one call, even for a file with a static batch size
        (a Triton model with max_batch_size > 0 batches around it)."""
        ...

    def close(self) -> None: ...


# Opens the backend for one model version (loading it into the server where that is the backend's job);
# raises ModelLoadError.
BackendFactory = Callable[[Path, ModelSpec, ModelIO], InferenceBackend]


@dataclass(frozen=True)
class EngineOptions:
    providers: Sequence[str]
    intra_op_threads: int = 0
    warmup_batch_size: int = 1
    # Threads of a second session that a batch running alone uses (0: none). With the cores split between
    # concurrent batches, a lone request would otherwise run on a fraction of them (0.59x of raw ONNX Runtime
    # for a 960x544 model at concurrency 1, docs/benchmarks.md).
    solo_intra_op_threads: int = 0
    # A provider every session must get (--device cuda|tensorrt): no silent CPU fallback (detector/devices.py).
    required_provider: str = ""
    # None: inference runs in ``session``. Else the session (one thread, never warmed) only describes the
    # model, and batches go to the backend.
    backend: BackendFactory | None = None


@dataclass
class Engine:
    """A validated, warmed-up session; thread-safe (ORT sessions allow concurrent ``run``)."""

    spec: ModelSpec
    session: ort.InferenceSession
    input_name: str
    input_dtype: type
    input_hw: tuple[int, int]
    # None when the batch dimension is dynamic; else the only batch size the model accepts.
    static_batch: int | None
    class_names: tuple[str, ...] = field(default=())
    # The same model with every core's threads, for a batch that runs while no other does.
    solo_session: ort.InferenceSession | None = None
    backend: InferenceBackend | None = None

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def providers(self) -> list[str]:
        if self.backend is not None:
            return self.backend.describe()
        return list(self.session.get_providers())

    def close(self) -> None:
        """Releases what the backend holds (connections, shared memory); the session goes with the object."""
        if self.backend is not None:
            self.backend.close()

    def preprocess(self, image: np.ndarray, source_wh: tuple[int, int] | None = None) -> tuple[np.ndarray, Letterbox]:
        """BGR uint8 [H, W, 3] -> the model's input [3, h, w] and where the image went (in the
        pixels of a ``source_wh`` source when ``image`` is its exact reduction)."""
        return preprocess_image(image, self.spec.family, self.input_hw, self.input_dtype, source_wh)

    def _run_once(self, batch: np.ndarray, alone: bool) -> np.ndarray:
        if self.backend is not None:
            return self.backend.run(batch)
        session = self.solo_session if alone and self.solo_session is not None else self.session
        outputs = session.run(None, {self.input_name: batch})
        return np.asarray(outputs[0], dtype=np.float32)

    def run(self, batch: np.ndarray, alone: bool = False) -> np.ndarray:
        """[n, 3, h, w] -> raw outputs [n, ...]; chunks and pads for models with a static batch size.
        ``alone``: no other batch is running, so the solo session (every core) may take it."""
        if self.static_batch is None:
            return self._run_once(batch, alone)
        size, parts = self.static_batch, []
        for start in range(0, len(batch), size):
            chunk = batch[start : start + size]
            if len(chunk) < size:
                pad = np.zeros((size - len(chunk), *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            parts.append(self._run_once(chunk, alone)[: min(size, len(batch) - start)])
        return np.concatenate(parts)


def preprocess_image(
    image: np.ndarray, family: str, input_hw: tuple[int, int], dtype: type, source_wh: tuple[int, int] | None = None
) -> tuple[np.ndarray, Letterbox]:
    """:meth:`Engine.preprocess` for callers that hold only the model's description (a BentoML front service)."""
    yolox = family == "yolox"
    canvas, box = letterbox(image, input_hw, centered=not yolox, source_wh=source_wh)
    chw: np.ndarray
    if yolox:
        # YOLOX takes BGR 0..255 unnormalised.
        chw = canvas.transpose(2, 0, 1).astype(dtype)
    else:
        rgb = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
        chw = (rgb.transpose(2, 0, 1).astype(np.float32) / 255.0).astype(dtype, copy=False)
    return np.ascontiguousarray(chw), box


def _session(path: Path, providers: Sequence[str], intra_op_threads: int) -> ort.InferenceSession:
    sess_options = ort.SessionOptions()
    if intra_op_threads:
        sess_options.intra_op_num_threads = intra_op_threads
    try:
        return ort.InferenceSession(str(path), sess_options=sess_options, providers=list(providers))
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
        raise ModelLoadError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc


def choose_providers(requested: Sequence[str]) -> list[str]:
    """The providers to ask for: as configured, else CUDA first when this build has it, then CPU."""
    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise ModelLoadError(
                f"execution providers {missing} are not in this onnxruntime build; available: {available}"
            )
        return list(requested)
    preferred = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return preferred or list(available)


def parse_names(raw: str) -> tuple[str, ...]:
    """The `names` metadata: Ultralytics writes a Python dict {0: 'person', ...}; a JSON list also works."""
    try:
        value = json.loads(raw)
    except ValueError:
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return ()
    if isinstance(value, dict):
        try:
            return tuple(str(value[k]) for k in sorted(value, key=int))
        except (TypeError, ValueError):
            return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return ()


def _dim(value: object) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def _num_classes(family: str, shape: tuple[int, ...], input_hw: tuple[int, int], path: Path) -> int:
    if len(shape) != 3:
        raise ModelLoadError(f"{path}: output shape {list(shape)} is not rank 3 as {family} models have")
    if family == "yolov8":
        # [N, 4+nc, A]; a raw YOLOX output has exactly the grid's anchor count in dimension 1.
        looks_yolox = shape[1] == expected_anchors_yolox(input_hw) and shape[2] >= 6
        if shape[1] < 5 or looks_yolox:
            hint = " (it looks like raw YOLOX: set family yolox)" if looks_yolox else ""
            raise ModelLoadError(f"{path}: output {list(shape)} is not the YOLOv8 layout [N, 4+nc, A]{hint}")
        return shape[1] - 4
    anchors = expected_anchors_yolox(input_hw)
    if shape[1] != anchors or shape[2] < 6:
        hint = " (it looks like YOLOv8: set family yolov8)" if shape[1] < shape[2] else ""
        raise ModelLoadError(
            f"{path}: output {list(shape)} is not the raw YOLOX layout [N, {anchors}, 5+nc] "
            f"for input {input_hw[1]}x{input_hw[0]}{hint}"
        )
    return shape[2] - 5


def load_engine(path: Path, spec: ModelSpec, options: EngineOptions) -> Engine:
    """Opens, validates and warms up a model; raises :class:`ModelLoadError` saying what does not fit."""
    if spec.family not in FAMILIES:
        raise ModelLoadError(f"unknown model family {spec.family!r}; supported: {', '.join(FAMILIES)}")
    session = _session(path, options.providers, options.intra_op_threads)
    check_session(options.required_provider, session.get_providers(), str(path))
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise ModelLoadError(
            f"{path}: expected one image input [N, 3, H, W], got {[(i.name, i.shape) for i in inputs]}"
        )
    model_input = inputs[0]
    batch_dim, channels, height, width = (_dim(d) for d in model_input.shape)
    if channels not in (None, 3):
        raise ModelLoadError(f"{path}: input {model_input.name} has {channels} channels, expected 3")
    input_hw = (height or spec.input_hw[0], width or spec.input_hw[1])
    dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16}.get(model_input.type)
    if dtype is None:
        raise ModelLoadError(f"{path}: input type {model_input.type} is not float32 or float16")
    engine = Engine(
        spec=spec,
        session=session,
        input_name=model_input.name,
        input_dtype=dtype,
        input_hw=input_hw,
        static_batch=batch_dim,
    )
    # On a GPU the cores are not what concurrent batches share, and a second session would double its memory.
    if options.backend is not None:
        output = session.get_outputs()[0]
        io = ModelIO(
            input_name=model_input.name,
            input_dtype=dtype,
            input_shape=(batch_dim, 3, *input_hw),
            output_name=output.name,
            output_shape=tuple(_dim(d) for d in output.shape),
        )
        engine.backend = options.backend(path, spec, io)
        if engine.backend.takes_any_batch():
            engine.static_batch = None
    solo = options.solo_intra_op_threads > options.intra_op_threads > 0
    if solo and options.backend is None and "CUDAExecutionProvider" not in session.get_providers():
        engine.solo_session = _session(path, options.providers, options.solo_intra_op_threads)

    # One real run validates the output layout and counts the classes; it also warms the session up.
    probe = np.full((1, 3, *input_hw), 114 if spec.family == "yolox" else 114 / 255, dtype)
    try:
        out = engine.run(probe)
        sessions = (False, True) if engine.solo_session is not None else (False,)
        for alone in sessions[1:]:
            engine.run(probe, alone=alone)
        if options.warmup_batch_size > 1 and batch_dim is None:
            for alone in sessions:
                engine.run(np.repeat(probe, options.warmup_batch_size, axis=0), alone=alone)
    except Exception as exc:
        engine.close()
        raise ModelLoadError(f"{path}: a test inference on input {list(probe.shape)} failed: {exc}") from exc
    try:
        engine.class_names = _class_names(
            spec, session, _num_classes(spec.family, tuple(out.shape), input_hw, path), path
        )
    except ModelLoadError:
        engine.close()
        raise
    return engine


def _class_names(spec: ModelSpec, session: ort.InferenceSession, nc: int, path: Path) -> tuple[str, ...]:
    names = spec.class_names or parse_names(session.get_modelmeta().custom_metadata_map.get("names", ""))
    if not names:
        log.warning(
            "%s has no class names (registry, settings or `names` metadata); using class_0..class_%d", path, nc - 1
        )
        names = tuple(f"class_{i}" for i in range(nc))
    if len(names) != nc:
        raise ModelLoadError(f"{path}: {len(names)} class names given but the output has {nc} classes")
    return tuple(names)
