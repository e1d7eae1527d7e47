"""A registry_gateway daemon (separate process) on the session's real MLflow server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from carmesh.v1 import registry_pb2_grpc
from kit.clients import insecure_channel
from tests.helpers import DaemonProcess
from tests.registry.support import Gateway, gateway_args


@pytest.fixture(scope="module")
def gateway(mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    cache_dir = tmp_path_factory.mktemp("registry-cache")
    with DaemonProcess("registry_gateway", gateway_args(mlflow_uri, cache_dir), timeout_s=90) as daemon:
        assert daemon.metrics_port is not None
        yield Gateway(daemon, daemon.metrics_port, cache_dir, mlflow_uri)


@pytest.fixture
async def stub(gateway: Gateway) -> AsyncIterator[registry_pb2_grpc.RegistryServiceStub]:
    async with insecure_channel(gateway.address) as channel:
        yield registry_pb2_grpc.RegistryServiceStub(channel)


@pytest.fixture
def model_name() -> str:
    """A name no other test (or earlier session on a reused MLflow) has used."""
    return f"test-{uuid.uuid4().hex[:10]}"
