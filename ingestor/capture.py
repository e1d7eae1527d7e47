"""OpenCV readers: video files (one thread each, paced by the caller) and live streams
(a reader thread that keeps only the newest frame, so a slow publisher drops stale frames
instead of falling further and further behind)."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ingestor.errors import SourceError
from kit.backoff import Backoff

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Encoded:
    data: bytes
    width: int
    height: int


def encode_jpeg(image: np.ndarray, quality: int) -> Encoded:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise SourceError(f"cannot encode a {image.shape} frame as JPEG")
    return Encoded(buffer.tobytes(), int(image.shape[1]), int(image.shape[0]))


class VideoFileReader:
    """A capture is not thread-safe: every call, release included, runs on one thread of its
    own, so a read still running when the source is stopped finishes before the release."""

    def __init__(self, path: Path, jpeg_quality: int) -> None:
        self.path = path
        self.jpeg_quality = jpeg_quality
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ingestor-video")
        self._cap: Any = None
        self.fps = 0.0  # the file's frame rate once open; 0 when the container does not say

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open(self) -> None:
        if self._cap is not None:
            self._cap.release()
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.path} as a video (unknown container or codec?)")
        self._cap = cap
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        self.fps = fps if math.isfinite(fps) and 0 < fps <= 1000 else 0.0

    async def open(self) -> None:
        """Opens (or reopens, to loop) the file; raises :class:`SourceError` when it is no video."""
        await self._call(self._open)

    def _read(self) -> Encoded | None:
        ok, image = self._cap.read()
        if not ok:
            return None
        return encode_jpeg(image, self.jpeg_quality)

    def _skip(self, count: int) -> int:
        for done in range(count):
            if not self._cap.grab():
                return done
        return count

    async def skip(self, count: int) -> int:
        """Passes over ``count`` frames without encoding them; returns how many there were."""
        skipped: int = await self._call(self._skip, count)
        return skipped

    async def read(self) -> Encoded | None:
        """The next frame as JPEG, None at the end of the file."""
        result: Encoded | None = await self._call(self._read)
        return result

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    async def close(self) -> None:
        try:
            await self._call(self._release)
        finally:
            self._executor.shutdown(wait=False)


LOST, RECONNECTED, OPEN_FAILED = "lost", "reconnected", "open_failed"  # LatestFrameReader events


@dataclass(frozen=True)
class StreamOptions:
    open_timeout_ms: int
    read_timeout_ms: int
    reconnect_max_s: float


class LatestFrameReader:
    """Reads a live stream (RTSP, HTTP MJPEG) on a thread that keeps only the newest frame.

    ``frames_dropped`` counts frames replaced before :meth:`next` took them. A lost stream
    is reopened with backoff until :meth:`close`; ``error`` says why while it is down,
    ``connected`` is False meanwhile, ``disconnects``/``reconnects``/``open_failures`` count
    the losses, the successful reopens and the failed attempts. ``on_event`` is called (on the
    reader's thread) with LOST, RECONNECTED or OPEN_FAILED as each happens.

    ``target`` gives the URL to open, checked against the stream policy again before every
    (re)open (it raises when the host is no longer allowed); ``url`` is the URL as shown in
    logs and errors, its password redacted.
    """

    def __init__(
        self,
        url: str,
        options: StreamOptions,
        target: Callable[[], str],
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url
        self.options = options
        self._target = target
        self._on_event = on_event
        self.frames_read = 0
        self.frames_dropped = 0
        self.connected = False
        self.disconnects = 0
        self.reconnects = 0
        self.open_failures = 0
        self.error = ""
        self._lock = threading.Lock()
        self._latest: tuple[np.ndarray, float] | None = None
        self._stop = threading.Event()
        self._new = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opened: asyncio.Future[str] | None = None
        self._thread = threading.Thread(target=self._run, name="ingestor-stream", daemon=True)

    def _open(self) -> Any:
        try:
            url = self._target()
        except Exception as exc:  # refused by the stream policy now (DNS changed) or unresolvable
            self.error = str(exc)
            log.warning("stream %s not opened: %s", self.url, exc)
            return None
        # Timeouts so a silent server cannot block read() for 30-60 s (STACK-NOTES).
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            self.options.open_timeout_ms,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            self.options.read_timeout_ms,
        ]
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
        if cap.isOpened():
            return cap
        cap.release()
        return None

    def _signal(self, opened_error: str | None = None) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            if opened_error is not None:
                loop.call_soon_threadsafe(self._resolve_open, opened_error)
            else:
                loop.call_soon_threadsafe(self._new.set)
        except RuntimeError:  # the loop is closed: the daemon is exiting
            self._stop.set()

    def _changed(self, event: str) -> None:
        if event == LOST:
            self.connected, self.disconnects = False, self.disconnects + 1
        elif event == RECONNECTED:
            self.connected, self.reconnects = True, self.reconnects + 1
        else:
            self.open_failures += 1
        if self._on_event is not None:
            self._on_event(event)

    def _resolve_open(self, error: str) -> None:
        if self._opened is not None and not self._opened.done():
            self._opened.set_result(error)

    def _run(self) -> None:
        cap = self._open()
        if cap is None:
            self._signal(opened_error=f"cannot open stream {self.url} within {self.options.open_timeout_ms} ms")
            return
        self.connected = True
        self._signal(opened_error="")
        delays = Backoff(0.5, self.options.reconnect_max_s).delays()
        try:
            while not self._stop.is_set():
                ok, image = cap.read()
                if ok:
                    with self._lock:
                        if self._latest is not None:
                            self.frames_dropped += 1
                        self._latest = (image, time.time())
                        self.frames_read += 1
                    self._signal()
                    continue
                cap.release()
                cap = None
                if self._stop.is_set():
                    break
                self._changed(LOST)
                while not self._stop.is_set() and cap is None:
                    delay = next(delays)
                    self.error = f"stream lost; reconnecting in {delay:.1f}s (attempt {self.open_failures + 1})"
                    log.warning("stream %s lost; reconnecting in %.1fs", self.url, delay)
                    self._stop.wait(delay)
                    if not self._stop.is_set():
                        cap = self._open()
                        if cap is None:
                            self._changed(OPEN_FAILED)
                if cap is not None:
                    self.error = ""
                    delays.reset()
                    self._changed(RECONNECTED)
                    log.info("stream %s reconnected", self.url)
        finally:
            if cap is not None:
                cap.release()

    async def start(self) -> None:
        """Starts the thread; raises :class:`SourceError` when the first open fails."""
        self._loop = asyncio.get_running_loop()
        self._opened = self._loop.create_future()
        self._thread.start()
        error = await self._opened
        if error:
            raise SourceError(error)

    async def next(self) -> tuple[np.ndarray, float]:
        """The newest frame not taken yet and its capture time (epoch seconds)."""
        while True:
            self._new.clear()  # before looking, so a frame arriving now sets it again
            with self._lock:
                latest, self._latest = self._latest, None
            if latest is not None:
                return latest
            await self._new.wait()

    async def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            # A read returns within read_timeout_ms, an open within open_timeout_ms.
            timeout = (self.options.open_timeout_ms + self.options.read_timeout_ms) / 1000 + 1
            await asyncio.to_thread(self._thread.join, timeout)
