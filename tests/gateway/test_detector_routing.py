"""The gateway in front of real detector daemons: round-robin over healthy replicas, all RPC kinds
of DetectorService, and traffic that carries on when a replica dies."""

from __future__ import annotations

import io
import itertools
import re
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from PIL import Image

from carmesh.v1 import detector_pb2, detector_pb2_grpc
from tests.gateway.support import DETECT_KEY, READER_KEY, bearer, metrics_port, run_gateway
from tests.helpers import DaemonProcess, free_port
from tests.onnx_factory import write_yolov8_model, yolov8_raw
from tests.status_details import details_of, fields_of
from tests.support import eventually

pytest.importorskip("detector.app", reason="the detector daemon is not in this tree")


def model_file(directory: Path, stem: str) -> Path:
    """A constant-output detector; the detector names the served model after the file's stem."""
    raw = yolov8_raw([(32, 32, 20, 20), (16, 16, 8, 8)], [[0.9, 0.05], [0.1, 0.6]])
    return write_yolov8_model(directory / f"{stem}.onnx", raw, (64, 64), ["car", "truck"])


def jpeg(width: int = 128, height: int = 96) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 100, 110)).save(buffer, format="JPEG")
    return buffer.getvalue()


@contextmanager
def detector_replicas(directory: Path, stems: list[str]) -> Iterator[list[DaemonProcess]]:
    with ExitStack() as stack:
        replicas = [
            stack.enter_context(
                DaemonProcess(
                    "detector",
                    ["--model-path", str(model_file(directory, stem)), "--max-wait-ms", "1"],
                )
            )
            for stem in stems
        ]
        yield replicas


def detect(stub: detector_pb2_grpc.DetectorServiceStub, key: str = DETECT_KEY) -> detector_pb2.DetectResponse:
    return stub.Detect(detector_pb2.DetectRequest(image=jpeg(), request_id="r"), metadata=bearer(key), timeout=30)


def health_status(channel: grpc.Channel, service: str) -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[DaemonProcess]]:
    with detector_replicas(tmp_path_factory.mktemp("models"), ["replica_a", "replica_b"]) as replicas:
        yield replicas


@pytest.fixture(scope="module")
def routed_gateway(keys_file: Path, two_replicas: list[DaemonProcess]) -> Iterator[DaemonProcess]:
    addresses = ",".join(replica.address for replica in two_replicas)
    with run_gateway(keys_file, f"127.0.0.1:{free_port()}", addresses) as gateway:
        yield gateway


@pytest.fixture()
def stub(routed_gateway: DaemonProcess) -> Iterator[detector_pb2_grpc.DetectorServiceStub]:
    with grpc.insecure_channel(routed_gateway.address) as channel:
        yield detector_pb2_grpc.DetectorServiceStub(channel)


def test_detect_through_the_gateway_returns_the_detectors_answer(stub):
    reply = detect(stub)
    assert (reply.image_width, reply.image_height) == (128, 96)
    assert [(d.class_name, round(d.score, 2)) for d in reply.detections] == [("car", 0.9), ("truck", 0.6)]
    # The model is 64x64 and the image 128x96 (letterboxed): box (22,22)-(42,42) maps to (44,28)-(84,68).
    car = reply.detections[0].box
    assert (car.x1, car.y1, car.x2, car.y2) == pytest.approx((44, 28, 84, 68), abs=0.5)


def test_round_robin_alternates_over_healthy_replicas(stub, routed_gateway, two_replicas):
    served = [detect(stub).model.name for _ in range(6)]
    assert Counter(served) == {"replica_a": 3, "replica_b": 3}
    assert all(first != second for first, second in itertools.pairwise(served))
    url = f"http://127.0.0.1:{metrics_port(routed_gateway)}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    for replica in two_replicas:
        pattern = (
            r'carmesh_gateway_upstream_calls_total\{code="OK",service="carmesh\.v1\.DetectorService",'
            rf'upstream="{re.escape(replica.address)}"\}} (\d+)'
        )
        match = re.search(pattern, text)
        assert match is not None and float(match.group(1)) >= 3


def test_bidirectional_stream_through_the_gateway(stub):
    requests = [
        detector_pb2.DetectStreamRequest(detect=detector_pb2.DetectRequest(image=jpeg(), request_id=f"frame-{i}"))
        for i in range(3)
    ]
    requests.append(
        detector_pb2.DetectStreamRequest(detect=detector_pb2.DetectRequest(image=b"not an image", request_id="bad"))
    )
    replies = list(stub.DetectStream(iter(requests), metadata=bearer(DETECT_KEY), timeout=30))
    by_id = {reply.request_id: reply for reply in replies}
    assert set(by_id) == {"frame-0", "frame-1", "frame-2", "bad"}
    assert all(len(by_id[f"frame-{i}"].result.detections) == 2 for i in range(3))
    assert not any(by_id[f"frame-{i}"].HasField("error") for i in range(3))
    bad = by_id["bad"].error
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert details_of(bad)["ErrorInfo"].reason == "INVALID_IMAGE" and fields_of(bad) == ["image"]


def test_model_info_and_detector_errors_pass_through(stub):
    info = stub.GetModelInfo(detector_pb2.GetModelInfoRequest(), metadata=bearer(DETECT_KEY), timeout=10)
    assert list(info.class_names) == ["car", "truck"]
    with pytest.raises(grpc.RpcError) as err:
        stub.Detect(detector_pb2.DetectRequest(image=b"garbage"), metadata=bearer(DETECT_KEY), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details()  # the detector's own explanation, unchanged
    # and its details (ErrorInfo, BadRequest), read as any gRPC client reads them
    status = rpc_status.from_call(err.value)
    assert status is not None and details_of(status)["ErrorInfo"].reason == "INVALID_IMAGE"
    assert fields_of(status) == ["image"]
    request = detector_pb2.DetectRequest(image=jpeg(), score_threshold=2.0)
    with pytest.raises(grpc.RpcError) as err:
        stub.Detect(request, metadata=bearer(DETECT_KEY), timeout=10)
    status = rpc_status.from_call(err.value)
    assert status is not None and details_of(status)["ErrorInfo"].reason == "INVALID_PARAMETER"
    assert fields_of(status) == ["score_threshold"]


def test_detect_needs_the_detect_scope(stub):
    with pytest.raises(grpc.RpcError) as err:
        detect(stub, key=READER_KEY)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_traffic_continues_when_a_replica_dies(keys_file, tmp_path):
    with detector_replicas(tmp_path, ["left", "right"]) as (left, right):
        addresses = f"{left.address},{right.address}"
        with (
            run_gateway(keys_file, f"127.0.0.1:{free_port()}", addresses) as gateway,
            grpc.insecure_channel(gateway.address) as channel,
        ):
            stub = detector_pb2_grpc.DetectorServiceStub(channel)
            assert {detect(stub).model.name for _ in range(4)} == {"left", "right"}

            left.stop()
            # Every call succeeds: one that reaches the dead replica first is retried on the live one.
            assert {detect(stub).model.name for _ in range(6)} == {"right"}
            assert health_status(channel, "carmesh.v1.DetectorService") == health_pb2.HealthCheckResponse.SERVING

            right.stop()
            eventually(
                lambda: (
                    health_status(channel, "carmesh.v1.DetectorService") == health_pb2.HealthCheckResponse.NOT_SERVING
                ),
                what="the gateway to report DetectorService NOT_SERVING with both replicas gone",
                timeout_s=20,
            )
            assert health_status(channel, "") == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as err:
                detect(stub)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "no healthy detector replica (of 2)" in err.value.details()
