"""The detector keeps its last-known-good model on local disk: restarted while the registry is
down, it serves that version at once (SERVING, detect answers, GetModelInfo names it), and
switches when the registry is back and promotes another. Real registry, MLflow and detector
processes."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from carmesh.v1 import detector_pb2, detector_pb2_grpc, registry_pb2_grpc
from tests.detector.test_registry_e2e import (
    BOX_V1,
    BOX_V2,
    IMAGE,
    detector_daemon,
    first_box,
    import_requests,
    model_file,
    registry_daemon,
)
from tests.support import eventually_async

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


async def _detect(address: str) -> detector_pb2.DetectResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        return await detector_pb2_grpc.DetectorServiceStub(channel).Detect(
            detector_pb2.DetectRequest(image=IMAGE), timeout=30
        )


async def _serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def _import(address: str, data: bytes, name: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await registry_pb2_grpc.RegistryServiceStub(channel).ImportModel(import_requests(data, name))
    return str(reply.version.version)


async def test_restarted_without_the_registry_it_serves_the_last_known_good_model(
    mlflow_uri: str, tmp_path: Path
) -> None:
    name = f"lkg-{uuid.uuid4().hex[:8]}"
    registry = registry_daemon(mlflow_uri, tmp_path)
    with registry:
        with detector_daemon(registry.address, name, tmp_path) as first:
            v1 = await _import(registry.address, model_file(tmp_path / "v1.onnx", BOX_V1), name)
            await eventually_async(lambda: _serving(first.address), what="the first promotion served", timeout_s=60)
            assert (await _detect(first.address)).model.version == v1
        assert (tmp_path / "detector-cache" / "last-known-good.json").is_file()

    # The registry is gone: a new detector on the same cache serves v1 without it.
    detector = detector_daemon(registry.address, name, tmp_path)
    detector.wait_for = "serving"
    with detector:
        reply = await _detect(detector.address)
        assert reply.model.version == v1 and first_box(reply) == (22, 27, 42, 37)
        async with grpc.aio.insecure_channel(detector.address) as channel:
            info = await detector_pb2_grpc.DetectorServiceStub(channel).GetModelInfo(detector_pb2.GetModelInfoRequest())
        assert (info.model.name, info.model.version, info.model.alias) == (name, v1, "champion")
        assert "serving the last-known-good" in detector.log()

        # The registry returns (same address) and promotes v2: the detector switches to it.
        with registry:
            v2 = await _import(registry.address, model_file(tmp_path / "v2.onnx", BOX_V2), name)

            async def on_v2() -> bool:
                return (await _detect(detector.address)).model.version == v2

            await eventually_async(on_v2, what="the switch to v2 once the registry is back", timeout_s=60)
            assert first_box(await _detect(detector.address)) == (12, 32, 20, 48)
