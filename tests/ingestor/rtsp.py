"""A live RTSP camera for the tests: GStreamer's rtsp-server in a process of Debian's python3
(tests/ingestor/rtsp_server.py), serving numbered frames (support.stamp) that it loops. It can be
cut (SIGKILL) and restarted on the same port, as a camera that drops off the network."""

from __future__ import annotations

import functools
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from tests.ingestor.support import jpeg, stamp

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER = Path(__file__).with_name("rtsp_server.py")
PACKAGES = "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-{base,good,ugly}"


@functools.cache
def missing() -> str:
    """Why no RTSP camera can run here ("" when one can)."""
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
        "from gi.repository import Gst; Gst.init(None);"
        "assert Gst.ElementFactory.find('x264enc'), 'x264enc';"
        "assert Gst.ElementFactory.find('rtph264pay'), 'rtph264pay';"
        "assert Gst.ElementFactory.find('jpegdec'), 'jpegdec'"
    )
    try:
        done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{SYSTEM_PYTHON} unusable: {exc}"
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"GStreamer RTSP server unavailable ({why}): apt-get install {PACKAGES}"
    return ""


class RtspCamera:
    def __init__(self, images: list[np.ndarray], fps: int, frames: int = 250) -> None:
        self.fps = fps
        self.port = 0
        self._dir = tempfile.TemporaryDirectory(prefix="rtsp-camera-")
        for n in range(frames):
            (Path(self._dir.name) / f"{n:05d}.jpg").write_bytes(jpeg(stamp(images[n % len(images)], n), quality=85))
        self._proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self) -> RtspCamera:
        """Starts the server (again: on the port it had, so the URL stays the same)."""
        argv = [SYSTEM_PYTHON, str(SERVER), self._dir.name, str(self.port), str(self.fps)]
        self._proc = proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # the server prints its port once it listens
        if not line.isdigit():
            proc.kill()
            raise RuntimeError(f"RTSP server did not start: {line} {proc.communicate()[1]}")
        self.port = int(line)
        return self

    def cut(self) -> None:
        """SIGKILL: the camera is gone at once, as on a power or network loss."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.communicate()
            self._proc = None

    def __enter__(self) -> RtspCamera:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cut()
        self._dir.cleanup()
