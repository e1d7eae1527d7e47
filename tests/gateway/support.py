"""Gateway test helpers shared with the CLI tests: API keys and the gateway as a real process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers import DaemonProcess, free_port

ADMIN_KEY = "admin-key-0123456789abcdef"
READER_KEY = "reader-key-0123456789abcdef"
DETECT_KEY = "detect-key-0123456789abcdef"
WRITER_KEY = "writer-key-0123456789abcdef"


def keys_file_text() -> str:
    return "\n".join(
        [
            "# key  name  scopes",
            f"{ADMIN_KEY} admin *",
            f"{READER_KEY} reader registry.read   # comments after a key are fine",
            f"{DETECT_KEY} camera detect",
            "",
            f"{WRITER_KEY} ci registry.read,registry.write",
        ]
    )


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


@contextmanager
def run_gateway(
    keys_file: Path, registry_addr: str, detector_addrs: str | None = None, *extra: str
) -> Iterator[DaemonProcess]:
    """The gateway as users run it (``python -m gateway``), with fast health checks for tests."""
    args = [
        "--api-keys-file",
        str(keys_file),
        "--registry-addr",
        registry_addr,
        # A port nothing listens on stands for "no detector", unless the test brings replicas.
        "--detector-addrs",
        detector_addrs or f"127.0.0.1:{free_port()}",
        "--health-check-interval-s",
        "0.2",
        *extra,
    ]
    with DaemonProcess("gateway", args, timeout_s=30) as gateway:
        yield gateway


def metrics_port(gateway: DaemonProcess) -> int:
    assert gateway.metrics_port is not None
    return gateway.metrics_port
