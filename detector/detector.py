"""The detection use case: validate the request, decode and preprocess off the event loop,
infer through the current model's batcher, post-process, and account the time spent."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from detector.engine import Engine, ModelRef
from detector.errors import BadImage, BadParameter, NoModel
from detector.imaging import decode_for_input
from detector.models import LoadedModel, ModelManager
from detector.postprocess import Detections, PostprocessParams, postprocess
from kit.letterbox import Letterbox


@dataclass(frozen=True)
class DetectDefaults:
    score_threshold: float = 0.25
    iou_threshold: float = 0.6
    classes: tuple[str, ...] = ()
    max_detections: int = 100
    max_image_pixels: int = 40_000_000


@dataclass(frozen=True)
class DetectOptions:
    """One request's knobs; None / empty / 0 take the server default."""

    score_threshold: float | None = None
    iou_threshold: float | None = None
    classes: Sequence[str] = ()
    max_detections: int = 0


@dataclass
class Timings:
    decode_ms: float = 0.0
    preprocess_ms: float = 0.0
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0
    total_ms: float = 0.0
    batch_size: int = 0


@dataclass(frozen=True)
class DetectResult:
    detections: Detections
    class_names: tuple[str, ...]
    model: ModelRef
    timings: Timings
    image_width: int
    image_height: int


def _threshold(name: str, value: float | None, default: float) -> float:
    if value is None:
        return default
    if math.isnan(value) or value < 0 or value > 1:
        raise BadParameter(f"{name} must be a number in [0, 1], got {value}", field=name)
    return float(value)


def resolve_classes(requested: Sequence[str], class_names: Sequence[str], what: str) -> frozenset[int] | None:
    """Class names -> model class indices; None means all classes."""
    if not requested:
        return None
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [name for name in requested if name not in index]
    if unknown:
        # Only the request's own filter is a field the client can fix; the server default is configuration.
        raise BadParameter(
            f"{what} {unknown} not among the model's classes: {', '.join(class_names)}",
            reason="UNKNOWN_CLASS",
            field="classes" if what == "classes" else None,
            metadata={"unknown": ",".join(unknown)},
        )
    return frozenset(index[name] for name in requested)


class Detector:
    def __init__(
        self, manager: ModelManager, executor: Executor, defaults: DetectDefaults, waiting_for: Callable[[], str]
    ) -> None:
        self._manager = manager
        self._executor = executor
        self._defaults = defaults
        # Says, for a person, why no model is loaded yet (alias, registry address, last error).
        self._waiting_for = waiting_for

    def model(self) -> LoadedModel:
        current = self._manager.current
        if current is None:
            raise NoModel(f"no model loaded yet: {self._waiting_for()}")
        return current

    def _params(self, options: DetectOptions, engine: Engine) -> PostprocessParams:
        if options.max_detections < 0:
            raise BadParameter(
                f"max_detections must be >= 0 (0: server default), got {options.max_detections}",
                field="max_detections",
            )
        if options.classes:
            class_ids = resolve_classes(options.classes, engine.class_names, "classes")
        else:
            class_ids = resolve_classes(self._defaults.classes, engine.class_names, "server default classes")
        return PostprocessParams(
            score_threshold=_threshold("score_threshold", options.score_threshold, self._defaults.score_threshold),
            iou_threshold=_threshold("iou_threshold", options.iou_threshold, self._defaults.iou_threshold),
            max_detections=options.max_detections or self._defaults.max_detections,
            class_ids=class_ids,
        )

    def _prepare(self, image: bytes, engine: Engine) -> tuple[np.ndarray, Letterbox, float, float]:
        started = time.perf_counter()
        decoded, width, height = decode_for_input(image, self._defaults.max_image_pixels, engine.input_hw)
        decoded_at = time.perf_counter()
        tensor, box = engine.preprocess(decoded, (width, height))
        return tensor, box, (decoded_at - started) * 1000, (time.perf_counter() - decoded_at) * 1000

    def _finish(
        self, raw: np.ndarray, engine: Engine, box: Letterbox, params: PostprocessParams
    ) -> tuple[Detections, float]:
        started = time.perf_counter()
        found = postprocess(raw, engine.family, engine.input_hw, box, params)
        return found, (time.perf_counter() - started) * 1000

    async def detect(self, image: bytes, options: DetectOptions) -> DetectResult:
        started = time.perf_counter()
        if not image:
            raise BadImage("image is empty: send the encoded bytes of a JPEG, PNG, BMP, WebP or TIFF file")
        loaded = self.model()
        engine = loaded.engine
        params = self._params(options, engine)
        loop = asyncio.get_running_loop()
        # Admission before decoding, so a flood is refused before it costs memory or CPU.
        with loaded.batcher.admit():
            tensor, box, decode_ms, preprocess_ms = await loop.run_in_executor(
                self._executor, self._prepare, image, engine
            )
            inferred = await loaded.batcher.infer(tensor)
        found, postprocess_ms = await loop.run_in_executor(
            self._executor, self._finish, inferred.output, engine, box, params
        )
        timings = Timings(
            decode_ms=decode_ms,
            preprocess_ms=preprocess_ms,
            queue_ms=inferred.queue_ms,
            inference_ms=inferred.inference_ms,
            postprocess_ms=postprocess_ms,
            total_ms=(time.perf_counter() - started) * 1000,
            batch_size=inferred.batch_size,
        )
        return DetectResult(found, engine.class_names, loaded.spec.ref, timings, box.source_width, box.source_height)
