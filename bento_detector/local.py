"""Runs ``bentoml serve`` (a service path or a built Bento's tag) on 127.0.0.1 for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SERVICE = "bento_detector.service:CarDetector"


def bentoml_command() -> str:
    """The ``bentoml`` of the running interpreter's environment."""
    return str(Path(sys.executable).parent / "bentoml")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:  # not listening yet, or busy starting its workers
        return False


@contextlib.contextmanager
def served(
    env: Mapping[str, str],
    target: str = SERVICE,
    cwd: Path = REPO,
    timeout_s: float = 90.0,
    log_file: Path | None = None,
) -> Iterator[str]:
    """Yields the base URL once /readyz answers 200 (every service, the model's included); stops it after.
    The server's output goes to ``log_file`` (default: a temporary file, removed after)."""
    url = f"http://127.0.0.1:{_free_port()}"
    with tempfile.TemporaryDirectory(prefix="bentoml-") as tmp:
        log_path = log_file or Path(tmp) / "serve.log"
        with log_path.open("wb") as out:
            # Its own session: the service workers are its children and go with it.
            proc = subprocess.Popen(
                [bentoml_command(), "serve", target, "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env={**os.environ, **env},
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + timeout_s
            while not _ready(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    exited = proc.poll() is not None
                    state = f"exited with {proc.returncode}" if exited else f"not ready in {timeout_s}s"
                    raise RuntimeError(f"bentoml serve {state}:\n{log_path.read_text()[-4000:]}")
                time.sleep(0.2)  # polling /readyz: BentoML has no ready file
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
