"""Every daemon on the kit skeleton: a start that fails after all is open leaves nothing behind,
and the exit codes say whose fault a failed start is."""

from __future__ import annotations

import asyncio
import importlib
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from kit.config import load_settings
from kit.daemon import DaemonSpec, running
from tests.helpers import REPO_ROOT, listening_ports, new_threads

# Port 1 is privileged and unused here: connections to it are refused at once.
NOWHERE = "127.0.0.1:1"

# Daemons that start without any service next to them; each keeps retrying what it cannot reach.
ALONE = {
    "gateway": ["--no-auth-required", "--public-plaintext", "--detector-addrs", NOWHERE, "--registry-addr", NOWHERE],
    "detector": ["--registry-addr", NOWHERE, "--registry-retry-initial-s", "0.05"],
    "ingestor": ["--kafka-bootstrap", NOWHERE, "--retry-initial-ms", "50"],
    "trainer": ["--feature-addr", NOWHERE, "--registry-addr", NOWHERE],
}


def spec_of(name: str) -> DaemonSpec[Any, Any]:
    spec: DaemonSpec[Any, Any] = importlib.import_module(f"{name}.app").DAEMON
    return spec


@pytest.mark.parametrize("name", sorted(ALONE))
async def test_a_start_failing_after_everything_opened_closes_it_all(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", raising=False)  # the ingestor sets it for its captures
    (tmp_path / "file").write_text("")
    # The ready file is written last, after the daemon's own start: under a file, that write fails.
    args = [
        *ALONE[name],
        "--mesh-plaintext",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--ready-file",
        str(tmp_path / "file" / "ready"),
    ]
    args += ["--work-dir", str(tmp_path / "work")] if name == "trainer" else []
    args += ["--model-cache-dir", str(tmp_path / "cache")] if name == "detector" else []
    spec = spec_of(name)
    cfg = load_settings(spec.settings, spec.env_prefix, args, environ={})
    threads_before = set(threading.enumerate())
    ports_before = listening_ports()

    with pytest.raises(NotADirectoryError):
        async with running(spec, cfg):
            raise AssertionError("a failed start yields nothing")

    assert [t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    assert listening_ports() == ports_before  # neither the gRPC nor the metrics port
    # Executors shut down without waiting: their threads get a moment to end.
    assert new_threads(threads_before, wait_s=5) == []


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARMESH_")}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_a_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run(
            "trainer", "--mesh-plaintext", "--grpc-port", str(port), "--metrics-port", "0", "--work-dir", str(tmp_path)
        )
    assert done.returncode == 1, done.stderr
    assert "cannot start" in done.stderr and f"127.0.0.1:{port}" in done.stderr


def test_settings_that_fail_once_used_exit_2() -> None:
    # Auth required, no keys.
    done = _run("gateway", "--mesh-plaintext", "--public-plaintext", "--grpc-port", "0", "--metrics-port", "0")
    assert done.returncode == 2, done.stderr
    assert "cannot start" in done.stderr and "no API keys are configured" in done.stderr
