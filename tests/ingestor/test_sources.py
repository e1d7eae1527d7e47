"""Sources (video file, live MJPEG stream, image folder) and IngestFrames through
`python -m ingestor` against the real local broker."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from carmesh.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc
from kit.clients import insecure_channel
from tests.helpers import REPO_ROOT, DaemonProcess, free_port
from tests.ingestor.mjpeg import MjpegCamera
from tests.ingestor.support import (
    ingestor,
    jpeg,
    png,
    read_stamp,
    read_topic,
    small_apollo_frames,
    unique_topic,
)
from tests.status_details import details_of, fields_of
from tests.support import eventually_async

pytestmark = pytest.mark.e2e

Daemon = tuple[DaemonProcess, str, int]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ingest-sources")


@pytest.fixture(scope="module")
def daemon(kafka_bootstrap: str, data_root: Path) -> Iterator[Daemon]:
    topic = unique_topic("sources")
    # The live-stream tests read cameras on 127.0.0.1: allowed explicitly (no stream host is by default).
    args = ["--allowed-roots", str(data_root), "--jpeg-quality", "92", "--stream-allowed-hosts", "127.0.0.1"]
    with ingestor(kafka_bootstrap, topic, *args) as proc:
        assert proc.metrics_port is not None
        yield proc, topic, proc.metrics_port


@pytest.fixture
async def stub(daemon: Daemon) -> AsyncIterator[ingest_pb2_grpc.IngestServiceStub]:
    async with insecure_channel(daemon[0].address) as channel:
        yield ingest_pb2_grpc.IngestServiceStub(channel)


async def source_status(stub: ingest_pb2_grpc.IngestServiceStub, source_id: str) -> ingest_pb2.SourceStatus:
    listed = await stub.ListSources(ingest_pb2.ListSourcesRequest(), timeout=10)
    return next(s for s in listed.sources if s.source_id == source_id)


async def published_at_least(stub: ingest_pb2_grpc.IngestServiceStub, source_id: str, count: int) -> bool:
    return (await source_status(stub, source_id)).frames_published >= count


async def run_to_end(stub: ingest_pb2_grpc.IngestServiceStub, spec: ingest_pb2.SourceSpec) -> ingest_pb2.SourceStatus:
    started = await stub.StartSource(ingest_pb2.StartSourceRequest(spec=spec), timeout=10)
    assert started.source.state == ingest_pb2.SOURCE_STATE_RUNNING
    source_id = started.source.source_id
    last: list[ingest_pb2.SourceStatus] = []

    async def finished() -> bool:
        last[:] = [await source_status(stub, source_id)]
        return last[0].state != ingest_pb2.SOURCE_STATE_RUNNING and last[0].frames_published == last[0].frames_read

    await eventually_async(finished, what=f"source {source_id} to finish", timeout_s=60, detail=lambda: last)
    return last[0]


def write_video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> None:
    fourcc = cv2.VideoWriter_fourcc(*"mp4v")
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), fourcc, fps, (w, h))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


async def test_video_file_is_paced_and_ids_are_stable(
    daemon: Daemon, stub: ingest_pb2_grpc.IngestServiceStub, kafka_bootstrap: str, shared_dir: Path, data_root: Path
) -> None:
    topic = daemon[1]
    originals = small_apollo_frames(shared_dir, 20)
    video = data_root / "drive.mp4"
    write_video(video, originals)
    fps = 8.0
    spec = ingest_pb2.SourceSpec(
        kind=ingest_pb2.SOURCE_KIND_VIDEO_FILE, uri=str(video), camera_id="cam-video", max_fps=fps
    )
    status = await run_to_end(stub, spec)
    assert status.state == ingest_pb2.SOURCE_STATE_FINISHED and status.frames_published == 20, status

    sent_ms: dict[str, int] = {}
    frames = await read_topic(
        kafka_bootstrap, topic, lambda f: f.camera_id == "cam-video", lambda got: len(got) >= 20, sent_ms=sent_ms
    )
    frames.sort(key=lambda f: f.seq)
    assert [f.seq for f in frames] == list(range(20))
    for frame, original in zip(frames, originals, strict=True):
        assert (frame.encoding, frame.width, frame.height) == (common_pb2.IMAGE_ENCODING_JPEG, 640, 360)
        assert frame.source == str(video)
        # The video's own content (mp4v is lossy): each frame is close to the one written.
        assert float(np.abs(decode(frame.image).astype(int) - original.astype(int)).mean()) < 12
    sends = sorted(sent_ms[f.frame_id] / 1e3 for f in frames)
    # Paced reads: never faster than max_fps on average (sleeping only makes it slower).
    assert (sends[-1] - sends[0]) / 19 >= 0.9 / fps
    # Capture times follow the file's own 25 fps, not when (or how evenly) it was read.
    times = [f.captured_at.ToNanoseconds() / 1e9 for f in frames]
    assert np.allclose(np.diff(times), 1 / 25.0, atol=1e-3), np.diff(times)

    # The same video again, unpaced: the same frame ids (deterministic), so consumers dedupe.
    spec.max_fps = 0
    await run_to_end(stub, spec)
    both = await read_topic(kafka_bootstrap, topic, lambda f: f.camera_id == "cam-video", lambda got: len(got) >= 40)
    assert len(both) == 40 and {f.frame_id for f in both} == {f.frame_id for f in frames}


async def test_mjpeg_stream_keeps_the_latest_frame_and_counts_drops(
    daemon: Daemon, stub: ingest_pb2_grpc.IngestServiceStub, kafka_bootstrap: str, shared_dir: Path
) -> None:
    topic = daemon[1]
    with MjpegCamera(small_apollo_frames(shared_dir, 8), fps=25) as camera:
        # The publisher takes 2 frames a second out of 25: a consumer much slower than the camera.
        spec = ingest_pb2.SourceSpec(
            kind=ingest_pb2.SOURCE_KIND_STREAM, uri=camera.url, camera_id="cam-live", max_fps=2
        )
        started = await stub.StartSource(ingest_pb2.StartSourceRequest(spec=spec), timeout=10)
        source_id = started.source.source_id

        async def published_some_and_dropped_stale_frames() -> bool:
            status = await source_status(stub, source_id)
            return status.frames_published >= 3 and status.frames_dropped > 0

        await eventually_async(
            published_some_and_dropped_stale_frames, what="3 frames published and stale ones dropped", timeout_s=30
        )
        stopped = await stub.StopSource(ingest_pb2.StopSourceRequest(source_id=source_id), timeout=15)
        sent_log = list(camera.sent)
    status = stopped.source
    assert status.state == ingest_pb2.SOURCE_STATE_STOPPED
    assert status.frames_dropped > 0 and status.frames_published >= 3, status
    # Every frame read was published, dropped as stale, or (at most one) still waiting when stopped.
    assert (
        status.frames_published + status.frames_dropped
        <= status.frames_read
        <= (status.frames_published + status.frames_dropped + 1)
    )

    sent_ms: dict[str, int] = {}
    frames = await read_topic(
        kafka_bootstrap,
        topic,
        lambda f: f.camera_id == "cam-live",
        lambda got: len(got) >= status.frames_published,
        sent_ms=sent_ms,
    )
    frames.sort(key=lambda f: f.seq)
    numbers = [read_stamp(f.image) for f in frames]
    assert numbers == sorted(set(numbers)), f"frames out of order or repeated: {numbers}"
    # Latest-frame semantics: stale frames are skipped (a plain read() loop would publish 0, 1, 2, ...)
    assert statistics.median(b - a for a, b in itertools.pairwise(numbers)) >= 3, numbers
    written = dict(sent_log)
    for frame, number in zip(frames, numbers, strict=True):
        age_at_publish = sent_ms[frame.frame_id] / 1000 - written[number]
        # Never further and further behind: each frame was fresh when published (generous bound).
        assert age_at_publish < 2.0, (number, age_at_publish, numbers)
        assert frame.source == camera.url and (frame.width, frame.height) == (640, 360)


async def test_image_folder_passes_files_through_and_loops(
    daemon: Daemon, stub: ingest_pb2_grpc.IngestServiceStub, kafka_bootstrap: str, shared_dir: Path, data_root: Path
) -> None:
    topic = daemon[1]
    folder = data_root / "cam-folder"
    folder.mkdir()
    images = small_apollo_frames(shared_dir, 3)
    files = {"0.jpg": jpeg(images[0]), "1.png": png(images[1]), "2.jpg": jpeg(images[2])}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "3.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")

    spec = ingest_pb2.SourceSpec(kind=ingest_pb2.SOURCE_KIND_IMAGE_FOLDER, uri=str(folder), camera_id="cam-folder")
    status = await run_to_end(stub, spec)
    assert status.state == ingest_pb2.SOURCE_STATE_FINISHED and status.frames_published == 3
    assert "3.jpg" in status.error
    frames = await read_topic(kafka_bootstrap, topic, lambda f: f.camera_id == "cam-folder", lambda got: len(got) >= 3)
    assert {Path(f.source).name: f.image for f in frames} == files
    assert {Path(f.source).name: f.encoding for f in frames}["1.png"] == common_pb2.IMAGE_ENCODING_PNG

    # A glob pattern, looping until stopped: each pass publishes new ids.
    spec = ingest_pb2.SourceSpec(
        kind=ingest_pb2.SOURCE_KIND_IMAGE_FOLDER, uri=f"{folder}/*.png", camera_id="cam-loop", max_fps=20, loop=True
    )
    started = await stub.StartSource(ingest_pb2.StartSourceRequest(spec=spec), timeout=10)
    source_id = started.source.source_id
    await eventually_async(
        lambda: published_at_least(stub, source_id, 3), what="3 frames of the looping folder", timeout_s=10
    )
    stopped = await stub.StopSource(ingest_pb2.StopSourceRequest(source_id=source_id), timeout=10)
    assert stopped.source.state == ingest_pb2.SOURCE_STATE_STOPPED and stopped.source.frames_published >= 3
    looped = await read_topic(kafka_bootstrap, topic, lambda f: f.camera_id == "cam-loop", lambda got: len(got) >= 3)
    assert {Path(f.source).name for f in looped} == {"1.png"} and len({f.frame_id for f in looped}) == len(looped)


def client_frame(camera_id: str, image: bytes, **fields: object) -> ingest_pb2.IngestFramesRequest:
    return ingest_pb2.IngestFramesRequest(frame=common_pb2.Frame(camera_id=camera_id, image=image, **fields))  # type: ignore[arg-type]


async def test_ingest_frames_client_stream(
    daemon: Daemon, stub: ingest_pb2_grpc.IngestServiceStub, kafka_bootstrap: str, shared_dir: Path
) -> None:
    topic = daemon[1]
    image = small_apollo_frames(shared_dir, 1)[0]
    good_jpeg, good_png = jpeg(image), png(image)

    async def requests() -> AsyncIterator[ingest_pb2.IngestFramesRequest]:
        yield client_frame("cam-client", good_jpeg, frame_id="client-given-id", seq=7)
        yield client_frame("", good_jpeg)
        yield client_frame("cam-client", b"")
        yield client_frame("cam-client", b"garbage bytes, not an image")
        yield client_frame("cam-client", good_png)
        yield client_frame("cam-client", good_jpeg, width=100, height=100)
        yield client_frame("cam-client", good_jpeg, encoding=common_pb2.IMAGE_ENCODING_PNG)
        yield client_frame("cam-client", good_jpeg, seq=8)

    reply = await stub.IngestFrames(requests(), timeout=30)
    assert (reply.accepted, reply.rejected, reply.acknowledged, reply.buffered) == (3, 5, 3, 0)
    reasons = " | ".join(status.message for status in reply.rejections)
    for expected in (
        "frame 1: camera_id is required",
        "frame 2: image is empty",
        "frame 3: not a readable image",
        "frame 5: width x height 100x100",
        "frame 6: encoding says IMAGE_ENCODING_PNG",
    ):
        assert expected in reasons
    # Each rejection says which frame, why (ErrorInfo) and which field (BadRequest), as a status.
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [(s.code, details_of(s)["ErrorInfo"].reason) for s in reply.rejections] == [(invalid, "INVALID_FRAME")] * 5
    assert [details_of(s)["ErrorInfo"].metadata["frame_index"] for s in reply.rejections] == ["1", "2", "3", "5", "6"]
    assert [fields_of(s) for s in reply.rejections] == [
        ["frame.camera_id"],
        ["frame.image"],
        ["frame.image"],
        ["frame.width", "frame.height"],
        ["frame.encoding"],
    ]
    frames = await read_topic(kafka_bootstrap, topic, lambda f: f.camera_id == "cam-client", lambda got: len(got) >= 3)
    # seq as given, else the frame's position in the stream.
    assert sorted(f.seq for f in frames) == [4, 7, 8]
    # The client's frame_id is only a reference: the server derives the id, in the caller's namespace.
    given = next(f for f in frames if f.client_frame_id == "client-given-id")
    assert len(given.frame_id) == 32 and given.frame_id != "client-given-id"
    assert {f.dataset_namespace for f in frames} == {"anonymous"}
    assert given.image == good_jpeg and (given.width, given.height) == (640, 360)
    assert given.encoding == common_pb2.IMAGE_ENCODING_JPEG and given.captured_at.seconds > 0
    png_frame = next(f for f in frames if f.image == good_png)
    assert png_frame.encoding == common_pb2.IMAGE_ENCODING_PNG and len(png_frame.frame_id) == 32
    assert len({f.frame_id for f in frames}) == 3 and all(f.source.startswith("grpc:") for f in frames)


async def test_source_errors_and_metrics(
    daemon: Daemon, stub: ingest_pb2_grpc.IngestServiceStub, data_root: Path
) -> None:
    metrics_port = daemon[2]

    async def start_error(**spec: object) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.StartSource(ingest_pb2.StartSourceRequest(spec=ingest_pb2.SourceSpec(**spec)), timeout=15)  # type: ignore[arg-type]
        return err.value

    err = await start_error(kind=ingest_pb2.SOURCE_KIND_IMAGE_FOLDER, uri=str(REPO_ROOT))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "--allowed-roots" in (err.details() or "")
    err = await start_error(kind=ingest_pb2.SOURCE_KIND_VIDEO_FILE, uri=str(REPO_ROOT / "README.md"))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = await start_error(kind=ingest_pb2.SOURCE_KIND_UNSPECIFIED, uri=str(data_root))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "SOURCE_KIND_STREAM" in (err.details() or "")
    err = await start_error(kind=ingest_pb2.SOURCE_KIND_IMAGE_FOLDER, uri=str(data_root), max_fps=-1)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_fps" in (err.details() or "")
    not_video = data_root / "not-a-video.mp4"
    not_video.write_bytes(b"\x00" * 1000)
    err = await start_error(kind=ingest_pb2.SOURCE_KIND_VIDEO_FILE, uri=str(not_video))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "as a video" in (err.details() or "")
    err = await start_error(kind=ingest_pb2.SOURCE_KIND_STREAM, uri="ftp://127.0.0.1/cam")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "rtsp" in (err.details() or "")
    for url in (f"http://127.0.0.1:{free_port()}/cam.mjpg", f"rtsp://127.0.0.1:{free_port()}/cam"):
        err = await start_error(kind=ingest_pb2.SOURCE_KIND_STREAM, uri=url)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "cannot open stream" in (err.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as stop_err:
        await stub.StopSource(ingest_pb2.StopSourceRequest(source_id="src-nope"), timeout=10)
    assert stop_err.value.code() == grpc.StatusCode.NOT_FOUND

    text = await _metrics(metrics_port)
    for name in (
        "carmesh_ingestor_frames_published_total",
        "carmesh_ingestor_frames_dropped_total",
        "carmesh_ingestor_bytes_published_total",
        "carmesh_ingestor_produce_seconds_bucket",
    ):
        assert name in text


async def _metrics(port: int) -> str:
    def fetch() -> str:
        return str(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())

    return await asyncio.to_thread(fetch)


async def test_sigterm_stops_sources_then_flushes(kafka_bootstrap: str, shared_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, image in enumerate(small_apollo_frames(shared_dir, 3)):
        (folder / f"{i}.jpg").write_bytes(jpeg(image))
    topic = unique_topic("sigterm")
    with ingestor(kafka_bootstrap, topic, "--allowed-roots", str(tmp_path)) as daemon:
        async with insecure_channel(daemon.address) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            spec = ingest_pb2.SourceSpec(
                kind=ingest_pb2.SOURCE_KIND_IMAGE_FOLDER, uri=str(folder), camera_id="c", loop=True
            )
            started = await stub.StartSource(ingest_pb2.StartSourceRequest(spec=spec), timeout=10)
            await eventually_async(
                lambda: published_at_least(stub, started.source.source_id, 10),
                what="10 frames of the looping folder",
                timeout_s=10,
            )
        daemon.terminate()
        assert daemon.proc is not None and daemon.proc.wait(timeout=30) == 0
    log = daemon.log()
    order = [
        log.index(line) for line in ("stopping: NOT_SERVING", f"source {started.source.source_id} stopped", '"stopped"')
    ]
    assert order == sorted(order), log[-3000:]
    assert "not acknowledged before shutdown" not in log
    # What the source read before it stopped was flushed to the broker.
    read = int(log.split(f"source {started.source.source_id} stopped after ")[1].split(" ")[0])
    frames = await read_topic(kafka_bootstrap, topic, lambda f: f.camera_id == "c")
    assert len(frames) == read
