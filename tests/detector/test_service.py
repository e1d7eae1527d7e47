"""The detector over gRPC, in this process on a free port, serving constant ONNX models."""

from __future__ import annotations

import asyncio
import io
import math
import struct
import threading
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from PIL import Image
from prometheus_client import generate_latest

from carmesh.v1 import detector_pb2, registry_pb2
from tests.detector.support import jpeg_bytes, running, settings
from tests.helpers import free_port
from tests.onnx_factory import write_yolov8_model, yolov8_raw
from tests.status_details import details_of, fields_of
from tests.support import eventually_async

# Model input 64x64; the test image is 128 wide, 64 high: scale 0.5, 16 rows of padding above.
# Car anchor (32,32,20,10) -> input [22,27,42,37] -> source [44,22,84,42].
# Truck anchor (10,30,8,8) -> input [6,26,14,34] -> source [12,20,28,36].
CAR_SRC = [44.0, 22.0, 84.0, 42.0]
TRUCK_SRC = [12.0, 20.0, 28.0, 36.0]
# Noise, so the JPEG has real scan data to cut into; the constant models ignore pixels anyway.
IMAGE = jpeg_bytes(np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8))


def png_header(width: int, height: int) -> bytes:
    """A tiny file whose header declares ``width`` x ``height`` (1-bit grey): cheap to make, huge to decode."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


@pytest.fixture
def model_a(tmp_path: Path) -> Path:
    raw = yolov8_raw([(32, 32, 20, 10), (10, 30, 8, 8)], [[0.9, 0.1], [0.2, 0.7]], anchors=8)
    return write_yolov8_model(tmp_path / "a.onnx", raw, (64, 64), names=["car", "truck"])


@pytest.fixture
def model_b(tmp_path: Path) -> Path:
    # Another version: one car at (16,40,8,16) -> input [12,32,20,48] -> source [24,32,40,64].
    raw = yolov8_raw([(16, 40, 8, 16)], [[0.8, 0.0]], anchors=8)
    return write_yolov8_model(tmp_path / "b.onnx", raw, (64, 64), names=["car", "truck"])


def boxes(response: detector_pb2.DetectResponse) -> list[list[float]]:
    return [
        [round(d.box.x1, 3), round(d.box.y1, 3), round(d.box.x2, 3), round(d.box.y2, 3)] for d in response.detections
    ]


async def test_detect_returns_boxes_in_source_pixels_with_model_and_timings(model_a: Path) -> None:
    async with running(settings(model_path=model_a)) as (_, stub):
        reply = await stub.Detect(detector_pb2.DetectRequest(image=IMAGE, request_id="r-1"))
        assert boxes(reply) == [CAR_SRC, TRUCK_SRC]
        assert [d.class_name for d in reply.detections] == ["car", "truck"]
        assert [d.class_id for d in reply.detections] == [0, 1]
        assert reply.detections[0].score == pytest.approx(0.9)
        assert (reply.image_width, reply.image_height, reply.request_id) == (128, 64, "r-1")
        assert reply.model.name == "a" and len(reply.model.version) == 12
        t = reply.timings
        assert t.batch_size >= 1 and t.total_ms > 0 and t.decode_ms > 0 and t.inference_ms > 0
        assert t.total_ms >= t.decode_ms + t.preprocess_ms + t.postprocess_ms

        only_trucks = await stub.Detect(detector_pb2.DetectRequest(image=IMAGE, classes=["truck"]))
        assert boxes(only_trucks) == [TRUCK_SRC]
        strict = await stub.Detect(detector_pb2.DetectRequest(image=IMAGE, score_threshold=0.8))
        assert boxes(strict) == [CAR_SRC]
        one = await stub.Detect(detector_pb2.DetectRequest(image=IMAGE, max_detections=1))
        assert boxes(one) == [CAR_SRC]

        info = await stub.GetModelInfo(detector_pb2.GetModelInfoRequest())
        assert info.family == registry_pb2.MODEL_FAMILY_YOLOV8 and list(info.class_names) == ["car", "truck"]
        assert (info.input_width, info.input_height) == (64, 64)
        assert "CPUExecutionProvider" in info.execution_providers
        assert len(info.sha256) == 64 and info.model.version == info.sha256[:12]
        assert info.loaded_at.seconds > 0 and info.max_batch_size == 8


async def test_server_default_class_filter(model_a: Path) -> None:
    async with running(settings(model_path=model_a, classes=["truck"])) as (_, stub):
        assert boxes(await stub.Detect(detector_pb2.DetectRequest(image=IMAGE))) == [TRUCK_SRC]
        # A request's own filter replaces the default.
        reply = await stub.Detect(detector_pb2.DetectRequest(image=IMAGE, classes=["car"]))
        assert boxes(reply) == [CAR_SRC]


def _truncated_jpeg() -> bytes:
    return IMAGE[: len(IMAGE) * 2 // 3]


def _jpeg_without_scan_data() -> bytes:
    return IMAGE[: IMAGE.rfind(b"\xff\xda")] + b"\xff\xd9"


def _tga() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 8)).save(out, "TGA")
    return out.getvalue()


BAD_INPUTS = {
    "empty": (b"", {}, "empty"),
    "not an image": (b"GET / HTTP/1.1\r\nhello world" * 20, {}, "not a recognised image"),
    "truncated jpeg": (_truncated_jpeg(), {}, "truncated"),
    "corrupt jpeg (no scan data)": (_jpeg_without_scan_data(), {}, "corrupt"),
    "corrupt jpeg (broken header)": (
        IMAGE[:2] + b"\xff\xc0\x00\x11" + bytes(40) + IMAGE[2:],
        {},
        "JPEG header is corrupt",
    ),
    "jpeg cut inside its header": (IMAGE[:300], {}, "JPEG header is corrupt or truncated"),
    "unsupported format": (_tga(), {}, "TGA images are not supported"),
    "20000x20000 png": (png_header(20000, 20000), {}, "too large"),
    "10000x5000 png over 40 MP": (png_header(10000, 5000), {}, "10000x5000"),
    "negative score": (IMAGE, {"score_threshold": -0.1}, "score_threshold"),
    "NaN score": (IMAGE, {"score_threshold": math.nan}, "score_threshold"),
    "score above 1": (IMAGE, {"score_threshold": 1.5}, "score_threshold"),
    "negative iou": (IMAGE, {"iou_threshold": -1.0}, "iou_threshold"),
    "NaN iou": (IMAGE, {"iou_threshold": math.nan}, "iou_threshold"),
    "negative max_detections": (IMAGE, {"max_detections": -3}, "max_detections"),
    "unknown class": (IMAGE, {"classes": ["car", "airplane"]}, "car, truck"),
}


async def test_bad_inputs_get_invalid_argument_and_the_daemon_keeps_serving(model_a: Path) -> None:
    async with running(settings(model_path=model_a)) as (app, stub):
        for name, (image, fields, message) in BAD_INPUTS.items():
            call = stub.Detect(detector_pb2.DetectRequest(image=image, **fields))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert message in (err.value.details() or ""), (name, err.value.details())
            # The status details name the request field at fault (BadRequest) for programs.
            status = await rpc_status.aio.from_call(call)
            assert status is not None and fields_of(status) == [next(iter(fields), "image")], name
            reply = await stub.Detect(detector_pb2.DetectRequest(image=IMAGE))
            assert boxes(reply) == [CAR_SRC, TRUCK_SRC], name
        assert app.manager.current is not None and app.manager.current.batcher.pending == 0


async def test_detect_stream_answers_in_order_and_survives_bad_items(model_a: Path) -> None:
    items = [
        detector_pb2.DetectRequest(image=IMAGE, request_id="0"),
        detector_pb2.DetectRequest(image=b"", request_id="1"),
        detector_pb2.DetectRequest(image=IMAGE, classes=["zebra"], request_id="2"),
        detector_pb2.DetectRequest(image=png_header(20000, 20000), request_id="3"),
        *[detector_pb2.DetectRequest(image=IMAGE, classes=["truck"], request_id=str(i)) for i in range(4, 20)],
    ]
    async with running(settings(model_path=model_a, stream_window=4)) as (_, stub):
        replies = [r async for r in stub.DetectStream(detector_pb2.DetectStreamRequest(detect=i) for i in items)]
        assert [r.request_id for r in replies] == [str(i) for i in range(20)]
        invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert [r.error.code for r in replies[:4]] == [0, invalid, invalid, invalid]
        assert "car, truck" in replies[2].error.message and "empty" in replies[1].error.message
        # Each failed item carries the same details a failed Detect call has.
        reasons = [details_of(r.error)["ErrorInfo"].reason for r in replies[1:4]]
        assert reasons == ["INVALID_IMAGE", "UNKNOWN_CLASS", "INVALID_IMAGE"]
        assert [fields_of(r.error) for r in replies[1:4]] == [["image"], ["classes"], ["image"]]
        assert boxes(replies[0].result) == [CAR_SRC, TRUCK_SRC] and not replies[0].HasField("error")
        assert all(boxes(r.result) == [TRUCK_SRC] and not r.HasField("error") for r in replies[4:])

        # Lock-step: the client waits for each answer before it sends the next item.
        call = stub.DetectStream()
        for i in range(3):
            await call.write(
                detector_pb2.DetectStreamRequest(
                    detect=detector_pb2.DetectRequest(image=IMAGE if i != 1 else b"junk", request_id=f"s{i}")
                )
            )
            reply = await call.read()
            assert reply.request_id == f"s{i}" and reply.HasField("error") == (i == 1)
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF


async def test_concurrent_requests_share_batches(model_a: Path) -> None:
    async with running(settings(model_path=model_a, max_batch_size=4, max_wait_ms=200)) as (app, stub):
        replies = await asyncio.gather(*(stub.Detect(detector_pb2.DetectRequest(image=IMAGE)) for _ in range(12)))
        assert all(boxes(r) == [CAR_SRC, TRUCK_SRC] for r in replies)
        sizes = [r.timings.batch_size for r in replies]
        assert max(sizes) > 1 and max(sizes) <= 4
        metrics = generate_latest(app.registry).decode()
        assert "carmesh_detector_batch_size_count" in metrics
        assert "carmesh_detector_inference_seconds_count" in metrics
        assert "carmesh_detector_queue_depth 0.0" in metrics
        assert (
            'carmesh_rpc_total{code="OK",method="/carmesh.v1.DetectorService/Detect",service="detector"} 12.0'
            in metrics
        )


async def test_queue_full_is_resource_exhausted(model_a: Path) -> None:
    cfg = settings(model_path=model_a, max_queue=2, max_batch_size=1, inference_threads=1)
    async with running(cfg) as (app, stub):
        gate = threading.Event()
        # Occupy the only inference thread so admitted requests stay pending.
        app.inference_executor.submit(gate.wait, 30)
        try:
            first = [asyncio.ensure_future(stub.Detect(detector_pb2.DetectRequest(image=IMAGE))) for _ in range(2)]
            batcher = app.manager.current.batcher  # type: ignore[union-attr]
            await eventually_async(
                lambda: batcher.pending == 2, what="both requests pending in the batcher", interval_s=0.01
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Detect(detector_pb2.DetectRequest(image=IMAGE))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert err.value.details() == "detector queue full (2 waiting); retry with backoff or add replicas"
        finally:
            gate.set()
        assert all(boxes(r) == [CAR_SRC, TRUCK_SRC] for r in await asyncio.gather(*first))
        assert boxes(await stub.Detect(detector_pb2.DetectRequest(image=IMAGE))) == [CAR_SRC, TRUCK_SRC]
        assert 'carmesh_detector_rejected_total{reason="queue_full"} 1.0' in generate_latest(app.registry).decode()


async def test_hot_reload_under_concurrent_load_has_zero_failures(model_a: Path, model_b: Path) -> None:
    from detector.engine import ModelRef, ModelSpec

    expected = {"1": [CAR_SRC, TRUCK_SRC], "2": [[24.0, 32.0, 40.0, 64.0]]}
    spec_a = ModelSpec(ref=ModelRef("car-detector", "1", "champion"), family="yolov8")
    spec_b = ModelSpec(ref=ModelRef("car-detector", "2", "champion"), family="yolov8")
    async with running(settings(model_path=model_a, max_batch_size=4, max_wait_ms=3)) as (app, stub):
        await app.manager.activate(model_a, spec_a)
        seen: list[str] = []
        failures: list[BaseException] = []
        stop = asyncio.Event()

        async def client() -> None:
            while not stop.is_set():
                try:
                    reply = await stub.Detect(detector_pb2.DetectRequest(image=IMAGE))
                except grpc.aio.AioRpcError as exc:
                    failures.append(exc)
                    continue
                seen.append(reply.model.version)
                if boxes(reply) != expected[reply.model.version]:
                    failures.append(AssertionError(f"v{reply.model.version} gave {boxes(reply)}"))

        clients = [asyncio.create_task(client()) for _ in range(12)]

        async def thirty_more_replies() -> None:
            before = len(seen)
            await eventually_async(
                lambda: len(seen) >= before + 30, what=f"30 replies after the first {before}", interval_s=0.01
            )

        for spec, path in [(spec_b, model_b), (spec_a, model_a), (spec_b, model_b)]:
            await thirty_more_replies()
            await app.manager.activate(path, spec)
        await thirty_more_replies()
        stop.set()
        await asyncio.gather(*clients)
        assert failures == []
        assert {"1", "2"} <= set(seen)
        assert seen[-1] == "2" and len(seen) >= 120
        assert (await stub.GetModelInfo(detector_pb2.GetModelInfoRequest())).model.version == "2"
        assert 'carmesh_detector_model_loads_total{outcome="ok"} 5.0' in generate_latest(app.registry).decode()


async def test_without_a_registry_it_is_not_serving_and_says_why() -> None:
    registry = f"127.0.0.1:{free_port()}"
    cfg = settings(registry_addr=registry, registry_retry_initial_s=0.05, registry_retry_max_s=0.2)
    async with running(cfg) as (app, stub):
        async with grpc.aio.insecure_channel(app.server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING

        async def says_the_registry_is_unreachable() -> bool:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Detect(detector_pb2.DetectRequest(image=IMAGE))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            details = err.value.details() or ""
            assert "car-detector@champion" in details and registry in details and "unreachable" in details, details
            return True

        # The first connection attempt has to fail before the detector can say so.
        await eventually_async(says_the_registry_is_unreachable, what="UNAVAILABLE naming the unreachable registry")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetModelInfo(detector_pb2.GetModelInfoRequest())
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
