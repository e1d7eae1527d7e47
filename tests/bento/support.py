"""Runs ``bentoml serve`` (a service path or a built Bento) on a free 127.0.0.1 port until the block ends."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import requests

from tests.helpers import REPO_ROOT, free_port
from tests.support import eventually


def bentoml_command() -> str:
    """The venv's ``bentoml``, next to the running interpreter."""
    import sys

    return str(Path(sys.executable).parent / "bentoml")


@contextlib.contextmanager
def bentoml_serve(target: str, env: Mapping[str, str], cwd: Path = REPO_ROOT, timeout_s: float = 90.0) -> Iterator[str]:
    """Yields the base URL once /readyz answers 200 (every service, the model one included, is up)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.NamedTemporaryFile(prefix="bentoml-", suffix=".log", delete=False) as log:
        log_path = Path(log.name)
    with log_path.open("wb") as out:
        # Its own session: the service workers are its children and go with it.
        proc = subprocess.Popen(
            [bentoml_command(), "serve", target, "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **env},
            start_new_session=True,
        )

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            return requests.get(f"{url}/readyz", timeout=2).status_code == 200
        except requests.RequestException:  # not listening yet, or busy starting its workers
            return False

    try:
        eventually(
            ready, what="bentoml serve to be ready", timeout_s=timeout_s, interval_s=0.2, detail=log_path.read_text
        )
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
        log_path.unlink(missing_ok=True)
