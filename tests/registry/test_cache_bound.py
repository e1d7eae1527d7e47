"""The registry's artifact cache stays under --cache-max-bytes: least recently served files are
evicted after a download (never one served in the last minute), an evicted version downloads
again from MLflow, and the metrics say what was removed. A real gateway on the real MLflow."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from carmesh.v1 import registry_pb2, registry_pb2_grpc
from kit.clients import insecure_channel
from tests.helpers import DaemonProcess
from tests.registry.support import Gateway, gateway_args, import_messages, sha256, yolov8_file

pytestmark = pytest.mark.integration


async def _download(stub: registry_pb2_grpc.RegistryServiceStub, name: str, version: str) -> bytes:
    data = b""
    async for message in stub.DownloadModel(registry_pb2.DownloadModelRequest(name=name, version=version)):
        data += message.chunk
    return data


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


async def test_the_artifact_cache_evicts_least_recently_served_versions(mlflow_uri: str, tmp_path: Path) -> None:
    name = f"bound-{uuid.uuid4().hex[:8]}"
    files = [yolov8_file(tmp_path / f"v{i}.onnx", score=0.5 + i / 10).read_bytes() for i in range(3)]
    bound = max(len(f) for f in files) * 2 + 100  # two versions fit, three do not
    cache_dir = tmp_path / "cache"
    args = gateway_args(mlflow_uri, cache_dir, "--cache-max-bytes", str(bound))
    with DaemonProcess("registry_gateway", args, timeout_s=90) as daemon:
        assert daemon.metrics_port is not None
        gateway = Gateway(daemon, daemon.metrics_port, cache_dir, mlflow_uri)
        async with insecure_channel(gateway.address) as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            versions = [(await stub.ImportModel(import_messages(data, name))).version.version for data in files]
            cached = [cache_dir / f"{sha256(data)}.onnx" for data in files]

            assert await _download(stub, name, versions[0]) == files[0]
            assert await _download(stub, name, versions[1]) == files[1]
            # Served an hour and half an hour ago: no longer protected as just handed out.
            _age(cached[0], 3600)
            _age(cached[1], 1800)
            assert await _download(stub, name, versions[2]) == files[2]

            assert not cached[0].exists() and cached[1].exists() and cached[2].exists()
            assert gateway.metric("carmesh_registry_cache_evictions_total") == 1
            assert gateway.metric("carmesh_registry_cache_evicted_bytes_total") == len(files[0])
            assert gateway.metric("carmesh_registry_cache_bytes") == len(files[1]) + len(files[2])

            # The evicted version is fetched from MLflow again; now v1 (least recently served) goes.
            _age(cached[2], 600)
            assert await _download(stub, name, versions[0]) == files[0]
            assert cached[0].exists() and not cached[1].exists() and cached[2].exists()
            assert gateway.metric("carmesh_registry_cache_evictions_total") == 2
