"""Background processes with pid files and logs, started in their own process group so a
stop reaches everything they spawned (gunicorn/uvicorn workers, postgres backends)."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


class StackError(RuntimeError):
    """A service could not be started or stopped; the message says which and where its log is."""


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


@dataclass
class Process:
    name: str
    argv: Sequence[str]
    run_dir: Path
    ready: Callable[[], bool]
    env: Mapping[str, str] = field(default_factory=dict)
    user: str | None = None
    ready_timeout_s: float = 60.0

    @property
    def log_path(self) -> Path:
        return self.run_dir / "logs" / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.run_dir / "pids" / f"{self.name}.pid"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _is_alive(pid) else None

    def start(self) -> bool:
        """Starts the process unless it already runs; returns True when it started it."""
        if self.pid() is not None:
            return False
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        uid = gid = None
        if self.user is not None and os.geteuid() == 0:
            entry = pwd.getpwnam(self.user)
            uid, gid = entry.pw_uid, entry.pw_gid
            env["HOME"] = entry.pw_dir
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                list(self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                user=uid,
                group=gid,
                extra_groups=None if uid is None else [],
            )
        self.pid_path.write_text(str(proc.pid))
        return True

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise StackError(f"{self.name} exited during start; see {self.log_path}:\n{self.tail()}")
            if self.ready():
                return
            time.sleep(0.25)
        raise StackError(
            f"{self.name} not ready after {self.ready_timeout_s:.0f}s; see {self.log_path}:\n{self.tail()}"
        )

    def stop(self, timeout_s: float = 15.0) -> bool:
        """SIGTERM to the process group, then SIGKILL after ``timeout_s``; True when something ran."""
        pid = self.pid()
        if pid is None:
            self.pid_path.unlink(missing_ok=True)
            return False
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _is_alive(pid):
            time.sleep(0.1)
        if _is_alive(pid):
            _signal_group(pid, signal.SIGKILL)
            time.sleep(0.2)
        # Stragglers of the group (e.g. workers whose parent already exited).
        _signal_group(pid, signal.SIGKILL)
        self.pid_path.unlink(missing_ok=True)
        return True

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
