"""Cameras that drop (issue 19, point 7): a real RTSP server (GStreamer) and an HTTP-MJPEG one
stream numbered frames, are cut and restarted on the same port; the ingestor reconnects with
backoff, keeps latest-frame semantics, counts the drops, and reports the stream's state through
ListSources and its metrics."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from carmesh.v1 import ingest_pb2, ingest_pb2_grpc
from kit.clients import insecure_channel
from tests.feature_service.support import metric
from tests.helpers import DaemonProcess
from tests.ingestor import rtsp
from tests.ingestor.mjpeg import MjpegCamera
from tests.ingestor.support import ingestor, read_stamp, read_topic, small_apollo_frames, unique_topic
from tests.support import eventually_async

pytestmark = pytest.mark.e2e

CAMERA_FPS, PUBLISH_FPS = 25, 4
OUTAGE_S = 3.0


@dataclass
class Daemon:
    proc: DaemonProcess
    topic: str
    metrics_port: int


@pytest.fixture(scope="module")
def daemon(kafka_bootstrap: str) -> Iterator[Daemon]:
    topic = unique_topic("drops")
    # Backoff from 0.5 s up to 2 s between reopen attempts: a 3 s outage takes a few, not hundreds.
    args = ["--stream-allowed-hosts", "127.0.0.1", "--stream-reconnect-max-s", "2"]
    with ingestor(kafka_bootstrap, topic, *args) as proc:
        assert proc.metrics_port is not None
        yield Daemon(proc, topic, proc.metrics_port)


class Switchable:
    """A camera that can be cut and brought back at the same URL."""

    def __init__(self, kind: str, shared_dir: Path) -> None:
        self.kind = kind
        self.images = small_apollo_frames(shared_dir, 4)
        self._rtsp: rtsp.RtspCamera | None = None
        self._mjpeg: MjpegCamera | None = None
        self._port = 0

    @property
    def url(self) -> str:
        if self._rtsp is not None:
            return self._rtsp.url
        return f"http://127.0.0.1:{self._port}/camera.mjpg"

    def start(self) -> None:
        if self.kind == "rtsp":
            if self._rtsp is None:
                self._rtsp = rtsp.RtspCamera(self.images, CAMERA_FPS)
            self._rtsp.start()
        else:
            self._mjpeg = MjpegCamera(self.images, CAMERA_FPS, port=self._port).__enter__()
            self._port = self._mjpeg.port

    def cut(self) -> None:
        if self._rtsp is not None:
            self._rtsp.cut()
        if self._mjpeg is not None:
            self._mjpeg.__exit__(None, None, None)
            self._mjpeg = None

    def close(self) -> None:
        self.cut()
        if self._rtsp is not None:
            self._rtsp.__exit__(None, None, None)


@pytest.fixture(params=["rtsp", "mjpeg"])
def camera(request: pytest.FixtureRequest, shared_dir: Path) -> Iterator[Switchable]:
    if request.param == "rtsp" and rtsp.missing():
        pytest.skip(rtsp.missing())
    cam = Switchable(request.param, shared_dir)
    cam.start()
    try:
        yield cam
    finally:
        cam.close()


def _metrics(port: int) -> dict[str, float]:
    names = ("stream_disconnects_total", "stream_reconnects_total", "stream_open_failures_total", "streams_down")
    return {name: metric(port, f"carmesh_ingestor_{name}") for name in names}


async def test_a_camera_that_drops_is_reconnected_with_backoff(
    daemon: Daemon, camera: Switchable, kafka_bootstrap: str
) -> None:
    camera_id = f"cam-drop-{camera.kind}"
    before = await asyncio.to_thread(_metrics, daemon.metrics_port)
    async with insecure_channel(daemon.proc.address) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        spec = ingest_pb2.SourceSpec(
            kind=ingest_pb2.SOURCE_KIND_STREAM, uri=camera.url, camera_id=camera_id, max_fps=PUBLISH_FPS
        )
        source_id = (await stub.StartSource(ingest_pb2.StartSourceRequest(spec=spec), timeout=15)).source.source_id
        last: list[ingest_pb2.SourceStatus] = []

        async def status() -> ingest_pb2.SourceStatus:
            listed = await stub.ListSources(ingest_pb2.ListSourcesRequest(), timeout=10)
            last[:] = [next(s for s in listed.sources if s.source_id == source_id)]
            return last[0]

        async def streaming(published: int) -> bool:
            s = await status()
            return s.connected and s.frames_published >= published and s.frames_dropped > 0

        await eventually_async(lambda: streaming(3), what="frames published", timeout_s=30, detail=lambda: last)

        cut_at = time.time()
        await asyncio.to_thread(camera.cut)

        async def down() -> bool:
            s = await status()
            return not s.connected and s.disconnects == 1 and "reconnecting" in s.error

        await eventually_async(down, what="the drop reported", timeout_s=15, detail=lambda: last)
        assert last[0].state == ingest_pb2.SOURCE_STATE_RUNNING, last
        during = await asyncio.to_thread(_metrics, daemon.metrics_port)
        assert during["streams_down"] == before["streams_down"] + 1, during
        assert during["stream_disconnects_total"] == before["stream_disconnects_total"] + 1, during

        await asyncio.sleep(OUTAGE_S)  # the outage itself: the camera stays away this long
        attempts = (await asyncio.to_thread(_metrics, daemon.metrics_port))["stream_open_failures_total"]
        attempts -= before["stream_open_failures_total"]
        # Backoff 0.5, 1, 2 s (with jitter): a handful of attempts, where a tight loop makes hundreds.
        assert 1 <= attempts <= 6, f"{attempts} reopen attempts in {OUTAGE_S}s"
        published_before = (await status()).frames_published  # all from before the cut by now
        back_at = time.time()
        await asyncio.to_thread(camera.start)

        async def back() -> bool:
            s = await status()
            return s.connected and s.reconnects == 1 and s.frames_published >= published_before + 3

        await eventually_async(back, what="the stream reconnected", timeout_s=30, detail=lambda: last)
        assert last[0].error == "" and last[0].disconnects == 1, last
        after = await asyncio.to_thread(_metrics, daemon.metrics_port)
        assert after["streams_down"] == before["streams_down"], after
        assert after["stream_reconnects_total"] == before["stream_reconnects_total"] + 1, after
        stopped = (await stub.StopSource(ingest_pb2.StopSourceRequest(source_id=source_id), timeout=15)).source

    frames = await read_topic(
        kafka_bootstrap,
        daemon.topic,
        lambda f: f.camera_id == camera_id,
        lambda got: len(got) >= stopped.frames_published,
    )
    frames.sort(key=lambda f: f.seq)
    times = [f.captured_at.ToNanoseconds() / 1e9 for f in frames]
    # Nothing captured while the camera was away: no stale frame is published again.
    assert not [t for t in times if cut_at + 0.5 < t < back_at], "frames from the outage"
    # Latest-frame semantics on both sides of the outage: numbers rise and skip stale frames.
    before_cut = [f for f, t in zip(frames, times, strict=True) if t <= cut_at + 0.5]
    after_back = [f for f, t in zip(frames, times, strict=True) if t >= back_at]
    assert len(before_cut) >= 3 and len(after_back) >= 3, (len(before_cut), len(after_back))
    for segment in (before_cut, after_back):
        numbers = [read_stamp(f.image) for f in segment]
        assert numbers == sorted(set(numbers)), numbers
        assert statistics.median(b - a for a, b in itertools.pairwise(numbers)) >= 3, numbers
