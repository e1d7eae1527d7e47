"""A daemon started inside its built image with ``buildah run`` (chroot isolation, host network).

The daemon runs the image's own ENTRYPOINT as the image's user, binds port 0 on 127.0.0.1 and
reports its ports in a ready file on a folder the test shares with the container (``/srv/test``).
Whatever happens, the container is removed when the block ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from devstack.images import image_config
from devstack.services import grpc_serving
from tests.support import eventually

SHARED_IN_CONTAINER = "/srv/test"
CONTAINER_PREFIX = "carmesh-image-test-"
# What a running daemon may leave in its container: /tmp and the data volume are writable in the
# cluster (emptyDir, volume); the others are mount points `buildah run` itself creates.
WRITABLE = ("tmp/", "var/lib/carmesh/", "run/", "srv/", "dev/", "proc/", "sys/", "etc/hosts", "etc/resolv.conf")


def buildah(*args: str, timeout_s: float = 120) -> str:
    done = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)} failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout


def all_containers() -> set[str]:
    return set(buildah("containers", "--quiet", "--notruncate").split())


def leftover_containers() -> list[str]:
    """Containers these tests made that still exist (to show that none is left behind)."""
    out = buildah("containers", "--format", "{{.ContainerName}}")
    return [name for name in out.split() if name.startswith(CONTAINER_PREFIX)]


class ImageDaemon:
    """``ENTRYPOINT ARGS`` of ``image`` in a fresh container until the block ends."""

    def __init__(self, image: str, args: Sequence[str], shared: Path, *, timeout_s: float = 90.0) -> None:
        self.image = image
        self.args = list(args)
        self.shared = shared
        self.timeout_s = timeout_s
        self.name = f"{CONTAINER_PREFIX}{uuid.uuid4().hex[:10]}"
        self.container: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.pid = 0  # the daemon's own pid (no pid namespace under chroot isolation)
        self._log = tempfile.NamedTemporaryFile(prefix=f"{self.name}-", suffix=".log", delete=False)  # noqa: SIM115
        self._ready = shared / f"{self.name}.ready.json"

    def start(self) -> ImageDaemon:
        entrypoint = image_config(self.image)["Entrypoint"]
        assert isinstance(entrypoint, list)
        self.container = buildah("from", "--pull=never", "--name", self.name, self.image).strip()
        argv = [
            *("buildah", "run", "--isolation", "chroot", "--volume", f"{self.shared}:{SHARED_IN_CONTAINER}"),
            *(self.container, "--", *entrypoint, "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0"),
            *("--ready-file", f"{SHARED_IN_CONTAINER}/{self._ready.name}", *self.args),
        ]
        self.proc = proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{self.image} exited with {proc.returncode}:\n{self.log()}")
            if not self._ready.exists():
                return False
            report = json.loads(self._ready.read_text())
            self.address, self.pid = report["grpc"], int(report["pid"])
            return grpc_serving(self.address)

        try:
            eventually(ready, what=f"{self.image} to serve", timeout_s=self.timeout_s, interval_s=0.2, detail=self.log)
        except BaseException:
            self.close()
            raise
        return self

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def uid(self) -> int:
        """The real uid the daemon runs as, from the host's /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
        raise AssertionError(f"no Uid line for pid {self.pid}")

    def _is_daemon(self) -> bool:
        with contextlib.suppress(OSError):
            return b"-m\0" in Path(f"/proc/{self.pid}/cmdline").read_bytes()
        return False

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM to the daemon itself, as the kubelet sends it (``buildah run`` would SIGKILL it);
        returns the container's exit status."""
        assert self.proc is not None and self.pid and self._is_daemon()
        os.kill(self.pid, signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def written_outside_volumes(self) -> list[str]:
        """Files the container wrote outside /tmp and the data volume (its overlay upper layer):
        with a read-only root filesystem each would have been an error."""
        assert self.container is not None
        merged = Path(buildah("mount", self.container).strip())
        try:
            upper = merged.parent / "diff"
            assert upper.is_dir(), f"not an overlay container: {merged}"
            written = []
            for path in upper.rglob("*"):
                relative = path.relative_to(upper).as_posix()
                if not path.is_dir() and not relative.startswith(WRITABLE):
                    written.append(relative)
            return sorted(written)
        finally:
            buildah("umount", self.container)

    def close(self) -> None:
        """Stops what still runs and removes the container; safe to call twice."""
        if self.proc is not None and self.proc.poll() is None:
            if self.pid and self._is_daemon():
                os.kill(self.pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self.container is not None:
            subprocess.run(["buildah", "rm", self.container], capture_output=True, timeout=120)
            self.container = None
        self._ready.unlink(missing_ok=True)

    def __enter__(self) -> ImageDaemon:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
        if exc is not None:
            sys.stderr.write(f"--- {self.image} log ---\n{self.log()[-6000:]}\n")
