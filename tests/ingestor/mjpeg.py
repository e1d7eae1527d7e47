"""A live HTTP MJPEG camera for the tests: multipart/x-mixed-replace with Content-Length per
part, each frame numbered (see support.stamp), logging when each number went out."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from tests.ingestor.support import jpeg, stamp


class MjpegCamera:
    def __init__(self, images: list[np.ndarray], fps: float, host: str = "127.0.0.1", port: int = 0) -> None:
        self.images = images
        self.fps = fps
        self.sent: list[tuple[int, float]] = []  # (frame number, epoch seconds written)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                camera._stream(self)

        # port: a camera restarted where the one before it was (the same URL), after a cut.
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/camera.mjpg"

    def _stream(self, handler: BaseHTTPRequestHandler) -> None:
        t0 = time.monotonic()
        n = 0
        while not self._stop.is_set():
            with self._lock:
                number = len(self.sent)
                self.sent.append((number, 0.0))
            data = jpeg(stamp(self.images[number % len(self.images)], number), quality=80)
            head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            try:
                handler.wfile.write(head + data + b"\r\n")
                handler.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return
            with self._lock:
                self.sent[number] = (number, time.time())
            n += 1
            delay = t0 + n / self.fps - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)

    def latest_before(self, when: float) -> int:
        """The highest frame number written before ``when`` (epoch seconds)."""
        with self._lock:
            return max((n for n, t in self.sent if 0 < t <= when), default=-1)

    def __enter__(self) -> MjpegCamera:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
