"""Test helpers: free ports and daemons run as separate processes, as a user runs them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from devstack.services import grpc_serving, tcp_open
from tests.support import eventually

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DaemonProcess:
    """Runs ``python -m MODULE ARGS`` until the block ends (SIGTERM, then SIGKILL after 15 s).

    ``wait_for`` is "serving" (grpc.health.v1 reports SERVING) or "port" (the port accepts
    connections, for daemons that start NOT_SERVING on purpose).
    """

    def __init__(
        self,
        module: str,
        args: Sequence[str],
        port: int,
        env: Mapping[str, str] | None = None,
        wait_for: str = "serving",
        timeout_s: float = 60.0,
    ) -> None:
        self.module = module
        self.args = list(args)
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.env = dict(env or {})
        self.wait_for = wait_for
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix=f"{module}-", suffix=".log", delete=False)  # noqa: SIM115

    def start(self) -> DaemonProcess:
        argv = [sys.executable, "-m", self.module, "--host", "127.0.0.1", "--grpc-port", str(self.port), *self.args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {proc.returncode}:\n{self.log()}")
            return grpc_serving(self.address) if self.wait_for == "serving" else tcp_open(self.port)

        try:
            eventually(
                ready, what=f"{self.module} to be ready", timeout_s=self.timeout_s, interval_s=0.1, detail=self.log
            )
        except AssertionError:
            self.stop()
            raise
        return self

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def terminate(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        if exc is not None:
            sys.stderr.write(f"--- {self.module} log ---\n{self.log()[-6000:]}\n")
