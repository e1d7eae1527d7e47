"""The car detector as BentoML services, over the detector's own engine, decoding, letterboxing and
post-processing (imported, not copied):

    CARMESH_BENTO_REGISTRY_ADDR=127.0.0.1:50064 bentoml serve bento_detector.service:CarDetector \
        --host 127.0.0.1 --port 3000
    curl -F image=@car.jpg http://127.0.0.1:3000/detect

``CarDetector`` (the HTTP front) decodes and letterboxes each image, sends its tensor to
``DetectorModel`` and post-processes the raw output; ``/detect`` returns the JSON line
``carmesh detect --json`` prints. ``DetectorModel.infer`` is a batchable API: BentoML's adaptive
batching groups the concurrent requests' tensors into one engine run. Two services rather than
one: BentoML sends a service's calls to its own batchable API as JSON (~0.5 s for one 416x416
tensor here), and calls to a dependency pickled.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument

from bento_detector import settings as bento_settings
from bento_detector.model import open_engine
from carmesh.v1 import detector_pb2
from carmesh_cli.detect import as_record
from detector.detector import DetectResult, Timings, resolve_classes
from detector.engine import Engine, ModelRef, preprocess_image
from detector.imaging import decode_for_input
from detector.postprocess import Detections, PostprocessParams, postprocess
from detector.server import detection_messages, model_ref
from kit.errors import DomainError
from kit.letterbox import Letterbox

log = logging.getLogger(__name__)

# Decorator arguments are fixed when the class is defined: the batch the engine warms up for, and the
# longest a request may wait for its batch (BentoML's dispatcher adapts the actual window below it).
MAX_BATCH_SIZE = 8
MAX_LATENCY_MS = 10_000
_DTYPES: dict[str, type] = {"float32": np.float32, "float16": np.float16}


# BentoML's client to a dependency replaces its connection session every max_requests calls (default 100) or
# max_age seconds and closes the old one under the calls still in flight on it, which then fail with
# ServerDisconnectedError (seen at concurrency 8): replace it never; a call that still meets it is retried.
_NEVER_RECYCLE = {"max_requests": 2**62, "max_age": 1e12}


@bentoml.service(name="carmesh-detector-model", traffic={"timeout": 60}, workers=1, runner_connection=_NEVER_RECYCLE)
class DetectorModel:
    """The engine: the model fetched from the registry by alias once, at start."""

    def __init__(self) -> None:
        self.engine: Engine = open_engine(bento_settings.load(), MAX_BATCH_SIZE)
        log.info("serving %s (%s) with %s", self.engine.spec.ref, self.engine.family, ",".join(self.engine.providers))

    @bentoml.api
    def describe(self) -> dict[str, Any]:
        """What the front needs to prepare inputs and read outputs."""
        engine, ref = self.engine, self.engine.spec.ref
        return {
            "model": {"name": ref.name, "version": ref.version, "alias": ref.alias},
            "family": engine.family,
            "input_hw": list(engine.input_hw),
            "input_dtype": np.dtype(engine.input_dtype).name,
            "class_names": list(engine.class_names),
        }

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def infer(self, tensors: np.ndarray) -> np.ndarray:
        """Preprocessed images [N, 3, H, W] (the model's input) -> its raw output [N, ...]."""
        expected = (3, *self.engine.input_hw)
        if tensors.ndim != 4 or tuple(tensors.shape[1:]) != expected or len(tensors) == 0:
            raise InvalidArgument(f"expected tensors [N, {', '.join(map(str, expected))}], got {list(tensors.shape)}")
        if not np.isfinite(tensors).all():
            raise InvalidArgument("tensors must be finite numbers")
        return self.engine.run(np.ascontiguousarray(tensors, dtype=self.engine.input_dtype))


@dataclass(frozen=True)
class _Model:
    ref: ModelRef
    family: str
    input_hw: tuple[int, int]
    input_dtype: type
    class_names: tuple[str, ...]


def _upload_name(saved: Path) -> str:
    """The client's file name: BentoML saves an upload as a temporary file named ``tmp`` + 8 random
    characters + the client's base name."""
    name = saved.name
    return name[11:] if name.startswith("tmp") and len(name) > 11 else name


def _threshold(name: str, value: float | None, default: float) -> float:
    if value is None:
        return default
    if math.isnan(value) or not 0 <= value <= 1:
        raise InvalidArgument(f"{name} must be a number in [0, 1], got {value}")
    return float(value)


@bentoml.service(name="carmesh-detector", traffic={"timeout": 60, "max_concurrency": 64}, workers=1)
class CarDetector:
    model = bentoml.depends(DetectorModel)

    def __init__(self) -> None:
        self.cfg = bento_settings.load()
        self._model: _Model | None = None
        self._describing = asyncio.Lock()

    async def _described(self) -> _Model:
        async with self._describing:
            if self._model is None:
                info = await self.model.to_async.describe()
                ref = info["model"]
                self._model = _Model(
                    ref=ModelRef(ref["name"], ref["version"], ref["alias"]),
                    family=info["family"],
                    input_hw=(int(info["input_hw"][0]), int(info["input_hw"][1])),
                    input_dtype=_DTYPES[info["input_dtype"]],
                    class_names=tuple(info["class_names"]),
                )
            return self._model

    def _prepare(self, data: bytes, model: _Model) -> tuple[np.ndarray, Letterbox]:
        decoded, width, height = decode_for_input(data, self.cfg.max_image_pixels, model.input_hw)
        return preprocess_image(decoded, model.family, model.input_hw, model.input_dtype, (width, height))

    def _params(
        self,
        model: _Model,
        score_threshold: float | None,
        iou_threshold: float | None,
        classes: list[str],
        max_detections: int,
    ) -> PostprocessParams:
        if max_detections < 0:
            raise InvalidArgument(f"max_detections must be >= 0 (0: server default), got {max_detections}")
        return PostprocessParams(
            score_threshold=_threshold("score_threshold", score_threshold, self.cfg.score_threshold),
            iou_threshold=_threshold("iou_threshold", iou_threshold, self.cfg.iou_threshold),
            max_detections=max_detections or self.cfg.max_detections,
            class_ids=resolve_classes(classes, model.class_names, "classes"),
        )

    @bentoml.api(route="/detect")
    async def detect(
        self,
        image: Path,
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        classes: str = "",
        max_detections: int = 0,
    ) -> dict[str, Any]:
        """One encoded image -> the record ``carmesh detect --json`` prints for it. ``classes``: names,
        comma-separated (empty: all); unset thresholds and 0 detections take the service defaults."""
        started = time.perf_counter()
        model = await self._described()
        try:
            wanted = [c.strip() for c in classes.split(",") if c.strip()]
            params = self._params(model, score_threshold, iou_threshold, wanted, max_detections)
            data = await asyncio.to_thread(image.read_bytes)
            if not data:
                raise InvalidArgument("image is empty: send the encoded bytes of a JPEG, PNG, BMP, WebP or TIFF file")
            tensor, box = await asyncio.to_thread(self._prepare, data, model)
        except DomainError as exc:
            raise InvalidArgument(str(exc)) from exc
        inferred = time.perf_counter()
        raw = await self._infer(tensor[None])
        inference_ms = (time.perf_counter() - inferred) * 1000
        found = await asyncio.to_thread(postprocess, raw[0], model.family, model.input_hw, box, params)
        reply = self._reply(model, found, box, (time.perf_counter() - started) * 1000, inference_ms)
        return as_record(Path(_upload_name(image)), reply, None)

    async def _infer(self, batch: np.ndarray) -> np.ndarray:
        import aiohttp

        try:
            return np.asarray(await self.model.to_async.infer(batch))
        except aiohttp.ServerDisconnectedError:  # see _NEVER_RECYCLE; inference has no side effects
            log.warning("the model service dropped the connection; retrying once")
            return np.asarray(await self.model.to_async.infer(batch))

    def _reply(
        self, model: _Model, found: Detections, box: Letterbox, total_ms: float, inference_ms: float
    ) -> detector_pb2.DetectResponse:
        # The batch BentoML formed is not visible to the caller of a batchable API: batch_size stays 0.
        timings = Timings(inference_ms=inference_ms, total_ms=total_ms)
        result = DetectResult(found, model.class_names, model.ref, timings, box.source_width, box.source_height)
        return detector_pb2.DetectResponse(
            detections=detection_messages(result),
            model=model_ref(result.model),
            timings=detector_pb2.DetectTimings(total_ms=total_ms, inference_ms=inference_ms),
            image_width=result.image_width,
            image_height=result.image_height,
        )
