"""Gateway fixtures: API keys, a recording upstream registry, and the gateway as a real process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.gateway.probe import ProbeServer
from tests.gateway.support import keys_file_text, run_gateway
from tests.helpers import DaemonProcess


@pytest.fixture(scope="session")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gateway") / "api-keys.txt"
    path.write_text(keys_file_text())
    return path


@pytest.fixture(scope="module")
def probe() -> Iterator[ProbeServer]:
    server = ProbeServer("probe-registry")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(keys_file: Path, probe: ProbeServer) -> Iterator[DaemonProcess]:
    with run_gateway(keys_file, probe.address, None, "--default-deadline-s", "40") as process:
        yield process


@pytest.fixture()
def channel(gateway: DaemonProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.address) as chan:
        yield chan
