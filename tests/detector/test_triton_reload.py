"""Hot reload with ``--backend triton``: the registry's alias moves from v1 to v2 while clients detect,
and the detector switches to Triton's model for version 2 with no failed request.

Triton here is pytriton's server (no onnxruntime backend, one version per model name), so the
versions are put into it by pytriton as models ``NAME-v1`` and ``NAME-v2``
(``--triton-model-control none --triton-model '{name}-v{version}'``: the detector waits for the
registry's version to be ready in Triton and sends its batches there). ``explicit`` mode, where the
detector loads each version through Triton's model-control API, needs a tritonserver with the
onnxruntime backend; against pytriton it fails at start with Triton's own message
(test_triton_backend.py)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import pytest

from carmesh.v1 import detector_pb2, detector_pb2_grpc, registry_pb2_grpc
from tests.detector.test_registry_e2e import (
    BOX_V1,
    BOX_V2,
    EXPECTED,
    IMAGE,
    first_box,
    import_requests,
    model_file,
    registry_daemon,
)
from tests.helpers import DaemonProcess
from tests.support import eventually_async
from tests.triton_support import pytriton_server

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


async def test_alias_moves_the_triton_version_under_load(mlflow_uri: str, tmp_path: Path) -> None:
    name = f"det-{uuid.uuid4().hex[:8]}"
    v1_file, v2_file = tmp_path / "v1.onnx", tmp_path / "v2.onnx"
    v1_bytes, v2_bytes = model_file(v1_file, BOX_V1), model_file(v2_file, BOX_V2)
    # A fresh registered model's versions are 1 and 2. pytriton holds one version per model name (its
    # sockets are named after the model), so each version is a Triton model of its own.
    with pytriton_server({f"{name}-v1": v1_file, f"{name}-v2": v2_file}) as triton_url:
        registry = registry_daemon(mlflow_uri, tmp_path)
        with registry:
            args = ["--registry-addr", registry.address, "--model-name", name]
            args += ["--model-cache-dir", str(tmp_path / "cache"), "--registry-retry-initial-s", "0.1"]
            args += ["--backend", "triton", "--triton-url", triton_url, "--triton-model-control", "none"]
            args += ["--triton-model", "{name}-v{version}"]
            with DaemonProcess("detector", args, wait_for="port") as detector:
                async with (
                    grpc.aio.insecure_channel(registry.address) as reg_channel,
                    grpc.aio.insecure_channel(detector.address) as det_channel,
                ):
                    reg = registry_pb2_grpc.RegistryServiceStub(reg_channel)
                    det = detector_pb2_grpc.DetectorServiceStub(det_channel)
                    v1 = await reg.ImportModel(import_requests(v1_bytes, name))
                    assert v1.version.version == "1"

                    async def reply_version() -> str:
                        try:
                            reply = await det.Detect(detector_pb2.DetectRequest(image=IMAGE), timeout=30)
                        except grpc.aio.AioRpcError:
                            return ""
                        return str(reply.model.version)

                    await eventually_async(
                        lambda: reply_version(), what="the detector to serve v1 from Triton", timeout_s=60
                    )
                    info = await det.GetModelInfo(detector_pb2.GetModelInfoRequest())
                    assert list(info.execution_providers) == [f"triton {triton_url} {name}-v1"]
                    reply = await det.Detect(detector_pb2.DetectRequest(image=IMAGE))
                    assert first_box(reply) == (22, 27, 42, 37)

                    seen: list[tuple[str, tuple[int, ...]]] = []
                    failures: list[Exception] = []
                    stop = asyncio.Event()

                    async def client() -> None:
                        while not stop.is_set():
                            try:
                                r = await det.Detect(detector_pb2.DetectRequest(image=IMAGE), timeout=30)
                                seen.append((r.model.version, first_box(r)))
                            except grpc.aio.AioRpcError as exc:
                                failures.append(exc)

                    clients = [asyncio.create_task(client()) for _ in range(4)]
                    v2 = await reg.ImportModel(import_requests(v2_bytes, name))
                    assert v2.version.version == "2"
                    await eventually_async(
                        lambda: bool(seen) and seen[-1][0] == "2", what="the hot reload to v2", timeout_s=60
                    )
                    after = len(seen)
                    await eventually_async(lambda: len(seen) >= after + 20, what="20 replies from v2", interval_s=0.01)
                    stop.set()
                    await asyncio.gather(*clients)
                    info = await det.GetModelInfo(detector_pb2.GetModelInfoRequest())
    assert failures == []
    # Each reply's box is the one of the version it names: version 1 and 2 really ran in Triton.
    assert {box for _, box in seen} <= EXPECTED
    assert all(box == (22, 27, 42, 37) for version, box in seen if version == "1")
    assert all(box == (12, 32, 20, 48) for version, box in seen if version == "2")
    assert list(info.execution_providers) == [f"triton {triton_url} {name}-v2"]
