"""A real Triton server for tests and benchmarks: pytriton's tritonserver, started from the
separate ``.venv-triton`` (pytriton needs numpy<2), serving ONNX files through ONNX Runtime."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, free_port
from tests.support import eventually

TRITON_PYTHON = REPO_ROOT / ".venv-triton" / "bin" / "python"


def triton_python() -> Path:
    """The interpreter of ``.venv-triton``; CI must have it (``make setup``), a laptop may skip."""
    if not TRITON_PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{TRITON_PYTHON} is missing: `make setup` creates it")
        pytest.skip(f"{TRITON_PYTHON} missing: run `make setup`")
    return TRITON_PYTHON


@contextlib.contextmanager
def pytriton_server(
    models: Mapping[str, Path], *, max_batch_size: int = 8, threads: int = 0, timeout_s: float = 90.0
) -> Iterator[str]:
    """Serves ``{"NAME" or "NAME:VERSION": onnx_file}``; yields the gRPC address once all are ready."""
    python = triton_python()
    with tempfile.TemporaryDirectory(prefix="pytriton-") as tmp:
        ready = Path(tmp) / "ready.json"
        log = Path(tmp) / "server.log"
        args = [str(python), "-m", "devstack.pytriton_server", "--ready-file", str(ready)]
        args += ["--max-batch-size", str(max_batch_size), "--threads", str(threads)]
        args += ["--grpc-port", str(free_port()), "--http-port", str(free_port()), "--metrics-port", str(free_port())]
        for name, path in models.items():
            model, _, version = name.partition(":")
            args += ["--model", f"{model}={path}:{version or 1}"]
        with log.open("wb") as out:
            # Its own session: tritonserver and the Python backend stubs are its children and go with it.
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True)
        try:

            def started() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"pytriton exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
                return ready.exists()

            eventually(started, what="pytriton to serve", timeout_s=timeout_s, interval_s=0.2, detail=log.read_text)
            yield json.loads(ready.read_text())["grpc"]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
