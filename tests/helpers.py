"""Test helpers: daemons run as separate processes, as a user runs them, and free ports for the
third-party servers that cannot report the port they bound."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from devstack.services import grpc_serving
from tests.support import eventually

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


def free_port() -> int:
    """A port that was free a moment ago: binding and releasing it races with other processes, so
    only for third-party servers (Redis, PostgreSQL, Tansu, MLflow) that cannot bind port 0 and say
    which port they got, and for addresses where nothing is meant to listen. Our daemons bind
    port 0 and report it in their ready file (see :class:`DaemonProcess`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening_ports() -> set[int]:
    """TCP ports this process listens on (from Linux's /proc), to show that a daemon closed them."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # fds close while we look
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/self/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def new_threads(before: set[threading.Thread], wait_s: float = 0.0) -> list[str]:
    """Threads started since ``before`` still alive after up to ``wait_s`` each, leaving out the ones
    the process owns: gRPC's poller and the event loop's default executor (``asyncio.to_thread``)."""
    started = [
        t
        for t in threading.enumerate()
        if t not in before and "_poll_wrapper" not in t.name and not t.name.startswith("asyncio_")
    ]
    for thread in started:
        thread.join(timeout=wait_s)
    return [t.name for t in started if t.is_alive()]


class DaemonProcess:
    """Runs ``python -m MODULE ARGS`` until the block ends (SIGTERM, then SIGKILL after 15 s).

    The daemon binds port 0 for gRPC and metrics (``args`` may name other ports) and reports what
    it got in its ready file; ``address`` and ``metrics_port`` are known once :meth:`start` returns.
    ``port`` fixes the gRPC port instead. A restart (:meth:`start` again) binds the port the first
    start got, so addresses handed to other daemons stay valid.
    ``wait_for`` is "serving" (grpc.health.v1 reports SERVING) or "port" (the gRPC server started,
    for daemons that start NOT_SERVING on purpose).
    """

    def __init__(
        self,
        module: str,
        args: Sequence[str],
        port: int = 0,
        *,
        env: Mapping[str, str] | None = None,
        wait_for: str = "serving",
        timeout_s: float = 60.0,
    ) -> None:
        self.module = module
        self.args = list(args)
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.metrics_port: int | None = None
        self.env = dict(env or {})
        self.wait_for = wait_for
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix=f"{module}-", suffix=".log", delete=False)  # noqa: SIM115
        self._ready_file = Path(self._log.name).with_suffix(".ready.json")

    def start(self) -> DaemonProcess:
        self._ready_file.unlink(missing_ok=True)  # the file of an earlier start names ports nobody holds
        argv = [
            *(sys.executable, "-m", self.module, "--host", "127.0.0.1", "--grpc-port", str(self.port)),
            *("--metrics-port", "0", "--ready-file", str(self._ready_file), *self.transport_args(), *self.args),
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {proc.returncode}:\n{self.log()}")
            return self._read_ready_file() and (self.wait_for != "serving" or grpc_serving(self.address))

        try:
            eventually(
                ready, what=f"{self.module} to be ready", timeout_s=self.timeout_s, interval_s=0.1, detail=self.log
            )
        except AssertionError:
            self.stop()
            raise
        return self

    def transport_args(self) -> list[str]:
        """Plaintext, asked for explicitly as daemons require, unless the test gives TLS files itself
        (tests/security covers mutual TLS; everything else tests what runs over it)."""
        args = [] if any(a.startswith("--mesh-") for a in self.args) else ["--mesh-plaintext"]
        if self.module == "gateway" and not any(a.startswith("--public-") for a in self.args):
            args.append("--public-plaintext")
        return args

    def _read_ready_file(self) -> bool:
        """Takes the ports the daemon reported, once it has (the file is written atomically)."""
        if not self._ready_file.exists():
            return False
        ready = json.loads(self._ready_file.read_text())
        self.address = ready["grpc"]
        self.port = int(self.address.rsplit(":", 1)[1])
        self.metrics_port = int(ready["metrics"].rsplit(":", 1)[1]) if ready["metrics"] else None
        return True

    @property
    def metrics_url(self) -> str:
        assert self.metrics_port is not None, f"{self.module} serves no metrics"
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

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
