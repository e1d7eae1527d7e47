"""MLflow going away: calls answer UNAVAILABLE, watch streams stay open and resume."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import grpc
import pytest

from carmesh.v1 import registry_pb2 as pb
from carmesh.v1 import registry_pb2_grpc
from kit.clients import insecure_channel
from tests.helpers import DaemonProcess, free_port
from tests.registry.support import Gateway, TcpProxy, gateway_args, import_messages, next_version, yolov8_file
from tests.support import eventually_async


@pytest.fixture
def proxy(mlflow_uri: str) -> Iterator[TcpProxy]:
    target = urlparse(mlflow_uri)
    forwarder = TcpProxy(target.hostname or "127.0.0.1", target.port or 80)
    yield forwarder
    forwarder.close()


async def test_watch_survives_an_mlflow_outage(
    gateway: Gateway, proxy: TcpProxy, model_name: str, tmp_path: Path
) -> None:
    # `gateway` talks to MLflow directly; `behind` reaches it only through the proxy.
    args = gateway_args(f"http://127.0.0.1:{proxy.port}", tmp_path / "cache", "--mlflow-max-retries", "0")
    async with insecure_channel(gateway.address) as direct_channel:
        direct = registry_pb2_grpc.RegistryServiceStub(direct_channel)
        for score in (0.5, 0.6):
            data = yolov8_file(tmp_path / f"{score}.onnx", score=score).read_bytes()
            await direct.ImportModel(import_messages(data, model_name))
        await direct.SetAlias(pb.SetAliasRequest(name=model_name, alias="live", version="1"))

        with DaemonProcess("registry_gateway", args, timeout_s=90) as behind:
            async with insecure_channel(behind.address) as channel:
                stub = registry_pb2_grpc.RegistryServiceStub(channel)
                watcher = stub.WatchAlias(pb.WatchAliasRequest(name=model_name, alias="live"))
                try:
                    first = await next_version(watcher)
                    assert first is not None and first.version == "1"

                    proxy.cut()
                    with pytest.raises(grpc.aio.AioRpcError) as failed:
                        await stub.ListModels(pb.ListModelsRequest())
                    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert f"MLflow at http://127.0.0.1:{proxy.port} is unreachable" in (failed.value.details() or "")
                    await eventually_async(
                        lambda: f"cannot poll the aliases of {model_name}" in behind.log(),
                        what="the failed MLflow poll in the watching gateway's log",
                        timeout_s=60,
                        detail=lambda: behind.log()[-3000:],
                    )

                    # Promoted while the watching gateway cannot see MLflow.
                    await direct.SetAlias(pb.SetAliasRequest(name=model_name, alias="live", version="2"))
                    proxy.restore()
                    changed = await next_version(watcher)
                    assert changed is not None and changed.version == "2"
                finally:
                    watcher.cancel()
                versions = await stub.ListModelVersions(pb.ListModelVersionsRequest(name=model_name))
                assert [v.version for v in versions.versions] == ["2", "1"]


async def test_serves_while_mlflow_is_down(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    args = gateway_args(dead, tmp_path / "cache", "--mlflow-max-retries", "0")
    with DaemonProcess("registry_gateway", args, timeout_s=90) as daemon:
        async with insecure_channel(daemon.address) as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            for call in (
                stub.ListModels(pb.ListModelsRequest()),
                stub.GetModelVersion(pb.GetModelVersionRequest(name="cars", alias="champion")),
                stub.ImportModel(import_messages(yolov8_file(tmp_path / "m.onnx").read_bytes(), "cars")),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await call
                assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
                assert f"MLflow at {dead} is unreachable" in (failed.value.details() or "")
