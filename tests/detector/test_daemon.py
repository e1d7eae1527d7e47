"""`python -m detector` as a user runs it: a separate process, flags, health, metrics, SIGTERM."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from carmesh.v1 import detector_pb2, detector_pb2_grpc
from tests.detector.support import jpeg_bytes
from tests.helpers import REPO_ROOT, DaemonProcess, free_port
from tests.onnx_factory import write_yolov8_model, yolov8_raw
from tests.support import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture
def model(tmp_path: Path) -> Path:
    raw = yolov8_raw([(32, 32, 20, 10)], [[0.1, 0.9]], anchors=4)
    return write_yolov8_model(tmp_path / "m.onnx", raw, (64, 64), names=["car", "truck"])


def test_daemon_serves_a_local_model_and_stops_on_sigterm(model: Path) -> None:
    daemon = DaemonProcess("detector", ["--model-path", str(model), "--max-batch-size", "2"])
    with daemon, grpc.insecure_channel(daemon.address) as channel:
        stub = detector_pb2_grpc.DetectorServiceStub(channel)
        image = jpeg_bytes(np.zeros((64, 64, 3), np.uint8))
        reply = stub.Detect(detector_pb2.DetectRequest(image=image, request_id="x"), timeout=10)
        assert [(d.class_name, round(d.box.x1), round(d.box.y2)) for d in reply.detections] == [("truck", 22, 37)]
        assert reply.model.name == "m" and reply.request_id == "x"
        with pytest.raises(grpc.RpcError) as err:
            stub.Detect(detector_pb2.DetectRequest(image=b"\x00" * 100), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = stub.GetModelInfo(detector_pb2.GetModelInfoRequest(), timeout=10)
        assert info.max_batch_size == 2 and list(info.class_names) == ["car", "truck"]
        text = urllib.request.urlopen(daemon.metrics_url, timeout=10).read().decode()
        assert "carmesh_detector_inference_seconds_bucket" in text and "carmesh_detector_queue_depth" in text
        assert daemon.proc is not None
        daemon.terminate()
        assert daemon.proc.wait(timeout=20) == 0
    assert '"msg": "stopped"' in daemon.log()


def test_daemon_without_registry_waits_not_serving_with_a_clear_log() -> None:
    registry = f"127.0.0.1:{free_port()}"  # nothing listens there
    daemon = DaemonProcess(
        "detector",
        [
            "--registry-addr",
            registry,
            "--metrics-port",
            "0",
            "--registry-retry-initial-s",
            "0.1",
            "--registry-retry-max-s",
            "0.5",
        ],
        wait_for="port",
    )
    with daemon, grpc.insecure_channel(daemon.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="carmesh.v1.DetectorService"), timeout=5)
        assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            detector_pb2_grpc.DetectorServiceStub(channel).Detect(detector_pb2.DetectRequest(image=b"x"), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "car-detector@champion" in err.value.details() and registry in err.value.details()
        eventually(
            lambda: f"watching car-detector@champion at {registry} failed" in daemon.log(),
            what="the failed registry watch in the detector's log",
            timeout_s=10,
            detail=lambda: daemon.log()[-3000:],
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model-path", "/nonexistent/model.onnx"], "model_path"),
        (["--score-threshold", "1.5"], "score_threshold"),
        (["--max-batch-size", "0"], "max_batch_size"),
        (["--providers", "NoSuchExecutionProvider"], "not in this onnxruntime build"),
    ],
)
def test_bad_settings_exit_with_a_message(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "detector", "--mesh-plaintext", "--grpc-port", "0", "--metrics-port", "0", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert message in done.stderr


def test_unloadable_model_file_exits_with_a_message(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"definitely not onnx")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "detector", "--mesh-plaintext", "--grpc-port", "0", "--metrics-port", "0"),
            "--model-path",
            str(junk),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "cannot serve" in done.stderr and "junk.onnx" in done.stderr
