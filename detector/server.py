"""DetectorService: proto <-> domain translation only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from carmesh.v1 import common_pb2, detector_pb2, detector_pb2_grpc, registry_pb2
from detector.detector import DetectOptions, Detector, DetectResult
from detector.engine import ModelRef
from detector.models import ModelManager
from detector.registry_source import FAMILY_TO_PROTO
from kit.errors import DomainError, internal_status

log = logging.getLogger(__name__)

SERVICE_NAME = detector_pb2.DESCRIPTOR.services_by_name["DetectorService"].full_name


def _options(request: detector_pb2.DetectRequest) -> DetectOptions:
    return DetectOptions(
        score_threshold=request.score_threshold if request.HasField("score_threshold") else None,
        iou_threshold=request.iou_threshold if request.HasField("iou_threshold") else None,
        classes=list(request.classes),
        max_detections=request.max_detections,
    )


def model_ref(ref: ModelRef) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=ref.name, version=ref.version, alias=ref.alias)


def detection_messages(result: DetectResult) -> list[common_pb2.Detection]:
    """The detections of one result as protos (shared by gRPC replies and Kafka messages)."""
    found = result.detections
    return [
        common_pb2.Detection(
            box=common_pb2.BoundingBox(x1=float(b[0]), y1=float(b[1]), x2=float(b[2]), y2=float(b[3])),
            score=float(score),
            class_id=int(cls),
            class_name=result.class_names[int(cls)],
        )
        for b, score, cls in zip(found.boxes.tolist(), found.scores.tolist(), found.class_ids.tolist(), strict=True)
    ]


def frame_detections(frame: common_pb2.Frame, result: DetectResult) -> common_pb2.FrameDetections:
    """What is published on carmesh.detections.v1 for one frame."""
    message = common_pb2.FrameDetections(
        frame_id=frame.frame_id,
        camera_id=frame.camera_id,
        model=model_ref(result.model),
        detections=detection_messages(result),
        image_width=result.image_width,
        image_height=result.image_height,
        seq=frame.seq,
    )
    if frame.HasField("captured_at"):
        message.captured_at.CopyFrom(frame.captured_at)
    message.detected_at.GetCurrentTime()
    return message


def _response(result: DetectResult, request_id: str) -> detector_pb2.DetectResponse:
    t = result.timings
    return detector_pb2.DetectResponse(
        detections=detection_messages(result),
        model=model_ref(result.model),
        timings=detector_pb2.DetectTimings(
            decode_ms=t.decode_ms,
            preprocess_ms=t.preprocess_ms,
            queue_ms=t.queue_ms,
            inference_ms=t.inference_ms,
            postprocess_ms=t.postprocess_ms,
            total_ms=t.total_ms,
            batch_size=t.batch_size,
        ),
        image_width=result.image_width,
        image_height=result.image_height,
        request_id=request_id,
    )


class DetectorServicer(detector_pb2_grpc.DetectorServiceServicer):
    def __init__(self, detector: Detector, manager: ModelManager, stream_window: int) -> None:
        self._detector = detector
        self._manager = manager
        self._stream_window = stream_window

    async def Detect(
        self, request: detector_pb2.DetectRequest, context: grpc.aio.ServicerContext
    ) -> detector_pb2.DetectResponse:
        result = await self._detector.detect(request.image, _options(request))
        return _response(result, request.request_id)

    async def _item(self, request: detector_pb2.DetectRequest) -> detector_pb2.DetectStreamResponse:
        try:
            result = await self._detector.detect(request.image, _options(request))
        except DomainError as exc:
            return detector_pb2.DetectStreamResponse(error=exc.status(), request_id=request.request_id)
        except Exception as exc:
            log.exception("DetectStream item %r failed", request.request_id)
            return detector_pb2.DetectStreamResponse(
                error=internal_status(f"internal error: {type(exc).__name__}"), request_id=request.request_id
            )
        return detector_pb2.DetectStreamResponse(
            result=_response(result, request.request_id), request_id=request.request_id
        )

    async def DetectStream(
        self, request_iterator: AsyncIterator[detector_pb2.DetectStreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[detector_pb2.DetectStreamResponse]:
        # Items run concurrently (so they can share batches) but are answered in order; the
        # bounded queue of futures is the stream's window and its backpressure on the client.
        order: asyncio.Queue[asyncio.Task[detector_pb2.DetectStreamResponse] | None] = asyncio.Queue(
            maxsize=self._stream_window
        )

        async def read() -> None:
            try:
                async for message in request_iterator:
                    await order.put(asyncio.create_task(self._item(message.detect)))
            finally:
                await order.put(None)

        reader = asyncio.create_task(read())
        started: list[asyncio.Task[detector_pb2.DetectStreamResponse]] = []
        try:
            while (task := await order.get()) is not None:
                started.append(task)
                yield await task
                started.remove(task)
            await reader  # re-raises a failed read (client gone, bad message)
        finally:
            reader.cancel()
            for task in started:
                task.cancel()
            while not order.empty():
                leftover = order.get_nowait()
                if leftover is not None:
                    leftover.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def GetModelInfo(
        self, request: detector_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> detector_pb2.GetModelInfoResponse:
        loaded = self._detector.model()
        engine = loaded.engine
        loaded_at = Timestamp()
        loaded_at.FromDatetime(loaded.loaded_at)
        batching = self._manager.batching
        return detector_pb2.GetModelInfoResponse(
            model=model_ref(loaded.spec.ref),
            family=FAMILY_TO_PROTO.get(engine.family, registry_pb2.MODEL_FAMILY_UNSPECIFIED),
            class_names=list(engine.class_names),
            input_width=engine.input_hw[1],
            input_height=engine.input_hw[0],
            execution_providers=engine.providers,
            loaded_at=loaded_at,
            sha256=loaded.spec.sha256,
            max_batch_size=batching.max_batch_size,
            max_wait_ms=batching.max_wait_ms,
        )
