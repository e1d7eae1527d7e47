"""KServe v2 inference protocol (``inference.GRPCInferenceService``) beside DetectorService.

Two models, both backed by the model the detector serves:

- the model itself, under its own name (e.g. ``car-detector``): raw tensors in and out, the input
  and output names and dims of the ONNX file, FP32, each image a request of the detector's batcher
  (so they share batches with Detect calls);
- ``<name>-e2e`` (``car-detector-e2e``): encoded images in (``IMAGE``, BYTES, [N]), detections out
  (``BOXES`` FP32 [N, M, 4] x1,y1,x2,y2 in source pixels, ``SCORES`` FP32 [N, M], ``CLASSES`` INT32
  [N, M], ``COUNTS`` INT32 [N]; rows past an image's count are padding: class -1, score 0), through
  the same decode, letterbox and post-processing as Detect. Request parameters ``score_threshold``,
  ``iou_threshold`` (double), ``max_detections`` (int64) and ``classes`` (comma-separated string)
  are Detect's options; the response's ``class_names`` parameter is the JSON list of class names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from importlib import metadata
from typing import Any

import grpc
import numpy as np

from carmesh.kserve import METHODS, SERVICE_NAME, Protocol, protocol
from detector.detector import DetectOptions, Detector, DetectResult
from detector.errors import BadParameter, BadTensor, UnknownModel
from detector.models import LoadedModel, ModelManager
from detector.tensors import BYTES, add_output, byte_elements, float_array, one_input, requested_outputs
from kit.errors import DomainError

__all__ = ["SERVICE_NAME", "KServeServicer", "add_kserve_to_server"]

E2E_SUFFIX = "-e2e"
E2E_INPUT = "IMAGE"
E2E_OUTPUTS = {"BOXES": "FP32", "SCORES": "FP32", "CLASSES": "INT32", "COUNTS": "INT32"}
PLATFORM_RAW = "onnxruntime_onnx"
PLATFORM_E2E = "carmesh_detector"
SERVER_NAME = "carmesh-detector"
# Parameters tritonclient may add to any request (priority, timeout, sequences): accepted and ignored.
_CLIENT_PARAMETERS = frozenset({"priority", "timeout", "sequence_id", "sequence_start", "sequence_end"})
_DOUBLE_PARAMETERS = ("score_threshold", "iou_threshold")


def _version() -> str:
    try:
        return metadata.version("carmesh")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _output_spec(model: LoadedModel) -> tuple[str, list[int]]:
    """The ONNX output's name and dims after the batch (-1 where not fixed)."""
    output = model.engine.session.get_outputs()[0]
    return output.name, [d if isinstance(d, int) and d > 0 else -1 for d in list(output.shape)[1:]]


def _options(request: Any) -> DetectOptions:
    """Detect's options from the request's parameters; an unknown or mistyped one is INVALID_ARGUMENT."""
    values: dict[str, Any] = {}
    for key, parameter in request.parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        if key in _CLIENT_PARAMETERS:
            continue
        if key in _DOUBLE_PARAMETERS and kind in ("double_param", "int64_param"):
            values[key] = float(getattr(parameter, kind))
        elif key == "max_detections" and kind in ("int64_param", "uint64_param"):
            values[key] = min(int(getattr(parameter, kind)), 2**31 - 1)
        elif key == "classes" and kind == "string_param":
            values[key] = [name.strip() for name in parameter.string_param.split(",") if name.strip()]
        else:
            raise BadParameter(
                f"parameter {key!r} ({kind or 'unset'}) is not one this model takes: score_threshold and "
                "iou_threshold (double), max_detections (int64), classes (comma-separated string)",
                field=f"parameters[{key!r}]",
            )
    return DetectOptions(
        score_threshold=values.get("score_threshold"),
        iou_threshold=values.get("iou_threshold"),
        classes=values.get("classes", []),
        max_detections=values.get("max_detections", 0),
    )


class KServeServicer:
    def __init__(self, detector: Detector, manager: ModelManager) -> None:
        self._detector = detector
        self._manager = manager
        self._proto: Protocol = protocol()

    def _reply(self, method: str, **fields: Any) -> Any:
        return self._proto.response_type(method)(**fields)

    def _model(self, name: str, version: str) -> tuple[LoadedModel, bool]:
        """The loaded model and whether ``name`` is its e2e form; NOT_FOUND for other names or versions."""
        loaded = self._detector.model()
        served = loaded.spec.ref
        if name not in (served.name, served.name + E2E_SUFFIX):
            raise UnknownModel(
                f"model {name!r} is not served here; models: {served.name}, {served.name}{E2E_SUFFIX}",
                field="model_name",
            )
        if version and version != served.version:
            raise UnknownModel(
                f"version {version!r} of {name!r} is not loaded; this detector serves version {served.version}",
                field="model_version",
            )
        return loaded, name != served.name

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self._reply("ServerLive", live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self._reply("ServerReady", ready=self._manager.current is not None)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            self._model(request.name, request.version)
        except DomainError:  # no model loaded yet, or another name or version
            return self._reply("ModelReady", ready=False)
        return self._reply("ModelReady", ready=True)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self._reply("ServerMetadata", name=SERVER_NAME, version=_version(), extensions=[])

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        loaded, e2e = self._model(request.name, request.version)
        reply = self._reply("ModelMetadata", name=request.name, versions=[loaded.spec.ref.version])
        if e2e:
            reply.platform = PLATFORM_E2E
            reply.inputs.add(name=E2E_INPUT, datatype=BYTES, shape=[-1])
            for name, datatype, shape in (
                ("BOXES", "FP32", [-1, -1, 4]),
                ("SCORES", "FP32", [-1, -1]),
                ("CLASSES", "INT32", [-1, -1]),
                ("COUNTS", "INT32", [-1]),
            ):
                reply.outputs.add(name=name, datatype=datatype, shape=shape)
            return reply
        engine = loaded.engine
        output_name, output_dims = _output_spec(loaded)
        reply.platform = PLATFORM_RAW
        reply.inputs.add(name=engine.input_name, datatype="FP32", shape=[-1, 3, *engine.input_hw])
        reply.outputs.add(name=output_name, datatype="FP32", shape=[-1, *output_dims])
        return reply

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        loaded, e2e = self._model(request.model_name, request.model_version)
        reply = self._reply(
            "ModelInfer", model_name=request.model_name, model_version=loaded.spec.ref.version, id=request.id
        )
        if e2e:
            await self._infer_e2e(request, reply)
        else:
            await self._infer_raw(loaded, request, reply)
        return reply

    def _batch_size(self, count: int, what: str) -> int:
        most = self._manager.batching.max_batch_size
        if not 1 <= count <= most:
            raise BadTensor(f"{what} has a batch of {count}; send 1 to {most} (the detector's max_batch_size)")
        return count

    async def _infer_raw(self, loaded: LoadedModel, request: Any, reply: Any) -> None:
        engine = loaded.engine
        output_name, _ = _output_spec(loaded)
        outputs = requested_outputs(request, [output_name])
        tensor = one_input(request, engine.input_name, "FP32")
        batch = float_array(tensor, (None, 3, *engine.input_hw))
        count = self._batch_size(batch.shape[0], f"input {tensor.name!r}")
        images: np.ndarray = batch.astype(engine.input_dtype, copy=False)
        # Each image holds a slot of the batcher, as a Detect call does, so a flood is refused the same way.
        with contextlib.ExitStack() as slots:
            for _ in range(count):
                slots.enter_context(loaded.batcher.admit())
            results = await asyncio.gather(*(loaded.batcher.infer(images[i]) for i in range(count)))
        if outputs:
            add_output(reply, output_name, np.stack([r.output for r in results]), "FP32")

    async def _infer_e2e(self, request: Any, reply: Any) -> None:
        outputs = requested_outputs(request, list(E2E_OUTPUTS))
        options = _options(request)
        images = byte_elements(one_input(request, E2E_INPUT, BYTES))
        self._batch_size(len(images), f"input {E2E_INPUT!r}")
        detections = (self._detector.detect(image, options) for image in images)
        settled = await asyncio.gather(*detections, return_exceptions=True)
        failed = [r for r in settled if isinstance(r, BaseException)]
        if failed:
            raise failed[0]
        results: list[DetectResult] = [r for r in settled if not isinstance(r, BaseException)]
        most = max(len(r.detections) for r in results)
        boxes = np.zeros((len(results), most, 4), np.float32)
        scores = np.zeros((len(results), most), np.float32)
        classes = np.full((len(results), most), -1, np.int32)
        counts = np.zeros(len(results), np.int32)
        for i, result in enumerate(results):
            found = result.detections
            k = len(found)
            boxes[i, :k], scores[i, :k], classes[i, :k], counts[i] = found.boxes, found.scores, found.class_ids, k
        arrays = {"BOXES": boxes, "SCORES": scores, "CLASSES": classes, "COUNTS": counts}
        for name in outputs:
            add_output(reply, name, arrays[name], E2E_OUTPUTS[name])
        reply.parameters["class_names"].string_param = json.dumps(list(results[0].class_names))


def add_kserve_to_server(servicer: KServeServicer, server: grpc.aio.Server) -> None:
    """Registers the servicer's unary methods under ``inference.GRPCInferenceService``."""
    proto = protocol()
    handlers = {
        method: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method),
            request_deserializer=proto.request_type(method).FromString,
            response_serializer=proto.response_type(method).SerializeToString,
        )
        for method in METHODS
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
