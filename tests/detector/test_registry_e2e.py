"""The detector fed by the real registry_gateway on a real MLflow server, all as separate processes:
waits for an unknown alias, serves the first promotion, hot-reloads the next one under load with
no failed request, and keeps serving while the registry is down."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from carmesh.v1 import detector_pb2, detector_pb2_grpc, registry_pb2, registry_pb2_grpc
from tests.detector.support import jpeg_bytes
from tests.helpers import DaemonProcess
from tests.onnx_factory import write_yolov8_model, yolov8_raw
from tests.support import eventually_async

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

IMAGE = jpeg_bytes(np.zeros((64, 64, 3), np.uint8))
# Input 64x64 and a 64x64 image: boxes come back in input pixels unchanged.
BOX_V1 = (32.0, 32.0, 20.0, 10.0)  # -> [22, 27, 42, 37]
BOX_V2 = (16.0, 40.0, 8.0, 16.0)  # -> [12, 32, 20, 48]
EXPECTED = {(22, 27, 42, 37), (12, 32, 20, 48)}


def model_file(path: Path, box: tuple[float, float, float, float]) -> bytes:
    return write_yolov8_model(
        path, yolov8_raw([box], [[0.9, 0.0]], anchors=4), (64, 64), names=["car", "truck"]
    ).read_bytes()


def import_requests(data: bytes, name: str) -> Iterator[registry_pb2.ImportModelRequest]:
    yield registry_pb2.ImportModelRequest(
        metadata=registry_pb2.ImportModelMetadata(
            name=name, family=registry_pb2.MODEL_FAMILY_YOLOV8, alias="champion", file_name="m.onnx"
        )
    )
    yield registry_pb2.ImportModelRequest(chunk=data)


def first_box(reply: detector_pb2.DetectResponse) -> tuple[int, ...]:
    box = reply.detections[0].box
    return tuple(round(v) for v in (box.x1, box.y1, box.x2, box.y2))


def registry_daemon(mlflow_uri: str, tmp_path: Path) -> DaemonProcess:
    args = ["--mlflow-tracking-uri", mlflow_uri, "--cache-dir", str(tmp_path / "registry-cache")]
    return DaemonProcess("registry_gateway", [*args, "--poll-interval-s", "0.2"], timeout_s=90)


def detector_daemon(registry_address: str, name: str, tmp_path: Path) -> DaemonProcess:
    """A detector of ``name``@champion that starts NOT_SERVING, waiting for the registry to have it."""
    args = [
        "--registry-addr",
        registry_address,
        "--model-name",
        name,
        "--model-cache-dir",
        str(tmp_path / "detector-cache"),
    ]
    args += ["--registry-retry-initial-s", "0.1", "--registry-retry-max-s", "1"]
    return DaemonProcess("detector", args, wait_for="port")


async def test_registry_promotions_reach_the_detector(mlflow_uri: str, tmp_path: Path) -> None:
    name = f"det-{uuid.uuid4().hex[:8]}"
    registry = registry_daemon(mlflow_uri, tmp_path)
    # The detector's arguments name the registry's address, known once it started.
    with registry, detector_daemon(registry.address, name, tmp_path) as detector:
        async with (
            grpc.aio.insecure_channel(registry.address) as reg_channel,
            grpc.aio.insecure_channel(detector.address) as det_channel,
        ):
            reg = registry_pb2_grpc.RegistryServiceStub(reg_channel)
            det = detector_pb2_grpc.DetectorServiceStub(det_channel)
            health = health_pb2_grpc.HealthStub(det_channel)

            async def serving() -> bool:
                reply = await health.Check(health_pb2.HealthCheckRequest())
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

            # The model does not exist yet: NOT_SERVING, UNAVAILABLE naming the alias and registry.
            await eventually_async(
                lambda: f"{name}@champion not found in the registry at {registry.address}" in detector.log(),
                what="the detector to find the model missing in the registry",
                detail=lambda: detector.log()[-3000:],
            )
            assert not await serving()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await det.Detect(detector_pb2.DetectRequest(image=IMAGE))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"{name}@champion" in (err.value.details() or "") and registry.address in (err.value.details() or "")
            assert f"{name}@champion" in detector.log()

            v1 = await reg.ImportModel(import_requests(model_file(tmp_path / "v1.onnx", BOX_V1), name))
            await eventually_async(serving, what="the detector to serve the first promotion", timeout_s=60)
            reply = await det.Detect(detector_pb2.DetectRequest(image=IMAGE))
            assert reply.model.version == v1.version.version and reply.model.alias == "champion"
            assert first_box(reply) == (22, 27, 42, 37)

            # Promote v2 while clients keep detecting: every request succeeds, the version flips.
            seen: list[str] = []
            failures: list[Exception] = []
            stop = asyncio.Event()

            async def client() -> None:
                while not stop.is_set():
                    try:
                        r = await det.Detect(detector_pb2.DetectRequest(image=IMAGE), timeout=30)
                        seen.append(r.model.version)
                        assert first_box(r) in EXPECTED
                    except (grpc.aio.AioRpcError, AssertionError) as exc:
                        failures.append(exc)

            clients = [asyncio.create_task(client()) for _ in range(6)]
            v2 = await reg.ImportModel(import_requests(model_file(tmp_path / "v2.onnx", BOX_V2), name))

            async def on_v2() -> bool:
                return bool(seen) and seen[-1] == v2.version.version

            await eventually_async(on_v2, what="the hot reload to v2", timeout_s=60)
            on_v2_from = len(seen)
            await eventually_async(
                lambda: len(seen) >= on_v2_from + 30, what="30 more replies after the reload", interval_s=0.01
            )
            stop.set()
            await asyncio.gather(*clients)
            assert failures == []
            assert {v1.version.version, v2.version.version} <= set(seen)

            # Registry down: the detector keeps serving what it has.
            registry.stop()
            await eventually_async(
                lambda: f"watching {name}@champion at {registry.address} failed" in detector.log(),
                what="the detector to see the registry gone",
                detail=lambda: detector.log()[-3000:],
            )
            assert await serving()
            reply = await det.Detect(detector_pb2.DetectRequest(image=IMAGE))
            assert reply.model.version == v2.version.version and first_box(reply) == (12, 32, 20, 48)
            info = await det.GetModelInfo(detector_pb2.GetModelInfoRequest())
            assert info.sha256 and (tmp_path / "detector-cache" / f"{info.sha256}.onnx").is_file()


async def test_the_gateway_serves_a_call_made_the_moment_the_detector_loads_its_champion(
    mlflow_uri: str, tmp_path: Path
) -> None:
    """`make demo`'s sequence: the detector waits NOT_SERVING for its alias, a version is promoted, the script
    waits for the detector to say SERVING and detects through the gateway at once. The gateway's health
    watchers look only every interval (a minute here), so the call must not fail on its stale view of the
    replica (it did, with UNAVAILABLE "no healthy detector replica", issue 14)."""
    from tests.gateway.support import bearer, run_gateway

    name = f"det-{uuid.uuid4().hex[:8]}"
    key = f"demo-{uuid.uuid4().hex}"
    (tmp_path / "keys").write_text(f"{key} demo detect\n")
    registry = registry_daemon(mlflow_uri, tmp_path)
    # The detector's arguments name the registry's address, known once it started.
    with registry, detector_daemon(registry.address, name, tmp_path) as detector:
        gateway_args = (tmp_path / "keys", registry.address, detector.address, "--health-check-interval-s", "60")
        with run_gateway(*gateway_args) as gateway:
            async with (
                grpc.aio.insecure_channel(registry.address) as reg_channel,
                grpc.aio.insecure_channel(detector.address) as det_channel,
                grpc.aio.insecure_channel(gateway.address) as gw_channel,
            ):
                health = health_pb2_grpc.HealthStub(det_channel)

                async def serving() -> bool:
                    reply = await health.Check(health_pb2.HealthCheckRequest())
                    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

                front = detector_pb2_grpc.DetectorServiceStub(gw_channel)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await front.Detect(detector_pb2.DetectRequest(image=IMAGE), metadata=bearer(key))
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE

                reg = registry_pb2_grpc.RegistryServiceStub(reg_channel)
                v1 = await reg.ImportModel(import_requests(model_file(tmp_path / "v1.onnx", BOX_V1), name))
                await eventually_async(serving, what="the detector to serve the first promotion", timeout_s=60)
                reply = await front.Detect(detector_pb2.DetectRequest(image=IMAGE), metadata=bearer(key), timeout=30)
                assert reply.model.version == v1.version.version
                assert first_box(reply) == (22, 27, 42, 37)
