"""Sources survive a restart (issue 19, point 1): the state file, the acknowledged-position
watermark, and a video source SIGKILLed mid-file that resumes at its offset under the same ids."""

from __future__ import annotations

import asyncio
import json
import stat
from collections import defaultdict
from pathlib import Path

import pytest

from carmesh.v1 import ingest_pb2, ingest_pb2_grpc
from ingestor.capture import StreamOptions
from ingestor.metrics import IngestorMetrics
from ingestor.paths import PathPolicy
from ingestor.publisher import Publisher, PublisherOptions
from ingestor.sources import SourceManager, SourceOptions
from ingestor.state import STATE_FILE, Position, SavedSource, StateStore, Watermark
from ingestor.streams import StreamPolicy
from kit.clients import insecure_channel
from kit.metrics import Metrics
from tests.ingestor.support import ingestor, jpeg, read_stamp, read_topic, small_apollo_frames, stamp, unique_topic
from tests.ingestor.test_sources import write_video
from tests.support import eventually_async


async def test_watermark_moves_only_past_a_prefix_of_acknowledged_frames() -> None:
    moves: list[Position] = []
    marks = Watermark(Position(seq=5), on_move=lambda: moves.append(marks.committed))
    tickets = [marks.hand(Position(index=i + 1, seq=6 + i)) for i in range(3)]
    marks.done(tickets[2])
    marks.done(tickets[1])
    assert marks.committed == Position(seq=5) and not moves, "moved past an unacknowledged frame"
    drained = asyncio.ensure_future(marks.drained())
    await asyncio.sleep(0)  # the point: drained() must still be waiting
    assert not drained.done()
    marks.done(tickets[0])
    assert marks.committed == Position(index=3, seq=8) and moves == [Position(index=3, seq=8)]
    await asyncio.wait_for(drained, 1)
    marks.skip(Position(rounds=1, seq=8))
    marks.done(tickets[0])  # a second acknowledgement of the same ticket changes nothing
    assert marks.committed == Position(rounds=1, seq=8)


def test_state_file_round_trip_is_private_and_a_damaged_one_is_set_aside(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    assert store.load() == []
    saved = [
        SavedSource("src-1", "video", "/data/a.mp4", "cam-a", 5.0, True, Position(rounds=2, index=7, seq=99)),
        SavedSource("src-2", "stream", "rtsp://u:secret@10.0.0.1/x", "cam-b", 0.0, False, Position()),
        SavedSource("src-3", "folder", "/data/\udcff", "cam-c", 1.0, False, Position(after="/data/\udcff/1.jpg")),
    ]
    store.write(saved)
    assert store.load() == saved
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600, "a stream password would be readable"
    assert [p.name for p in store.directory.iterdir()] == [STATE_FILE], "temporary files left behind"

    for damaged in ("{not json", json.dumps({"version": 1, "sources": [{"source_id": "x", "kind": "exe"}]})):
        store.path.write_text(damaged)
        assert store.load() == []
        assert not store.path.exists()
        aside = [p for p in store.directory.iterdir() if p.name.startswith(f"{STATE_FILE}.damaged-")]
        assert aside and aside[0].read_text() == damaged
        aside[0].unlink()


@pytest.mark.e2e
async def test_video_source_resumes_at_its_offset_after_sigkill(
    kafka_bootstrap: str, shared_dir: Path, tmp_path: Path
) -> None:
    topic, count = unique_topic("resume"), 40
    (tmp_path / "data").mkdir()
    video = tmp_path / "data" / "drive.mp4"
    base = small_apollo_frames(shared_dir, 1)[0]
    write_video(video, [stamp(base, n) for n in range(count)])
    other = tmp_path / "data" / "stills"
    other.mkdir()
    (other / "a.jpg").write_bytes(jpeg(base))
    args = ["--allowed-roots", str(tmp_path / "data"), "--state-dir", str(tmp_path / "state")]
    args += ["--max-in-flight", "4", "--state-flush-interval-ms", "50"]
    with ingestor(kafka_bootstrap, topic, *args) as daemon:
        async with insecure_channel(daemon.address) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            spec = ingest_pb2.SourceSpec(
                kind=ingest_pb2.SOURCE_KIND_VIDEO_FILE, uri=str(video), camera_id="cam-resume", max_fps=10
            )
            source_id = (await stub.StartSource(ingest_pb2.StartSourceRequest(spec=spec), timeout=10)).source.source_id
            # A source stopped on request is not resumed.
            still = ingest_pb2.SourceSpec(
                kind=ingest_pb2.SOURCE_KIND_IMAGE_FOLDER, uri=str(other), max_fps=1, loop=True
            )
            stopped = (await stub.StartSource(ingest_pb2.StartSourceRequest(spec=still), timeout=10)).source.source_id
            await stub.StopSource(ingest_pb2.StopSourceRequest(source_id=stopped), timeout=10)

            async def halfway() -> bool:
                listed = await stub.ListSources(ingest_pb2.ListSourcesRequest(), timeout=10)
                return next(s for s in listed.sources if s.source_id == source_id).frames_published >= 15

            await eventually_async(halfway, what="15 frames published", timeout_s=60)
        assert daemon.proc is not None
        daemon.proc.kill()
        daemon.proc.wait()
        saved = json.loads((tmp_path / "state" / STATE_FILE).read_text())["sources"]
        assert [s["source_id"] for s in saved] == [source_id] and saved[0]["position"]["index"] >= 10, saved

        await asyncio.to_thread(daemon.start)
        async with insecure_channel(daemon.address) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            last: list[ingest_pb2.SourceStatus] = []

            async def finished() -> bool:
                listed = await stub.ListSources(ingest_pb2.ListSourcesRequest(), timeout=10)
                last[:] = list(listed.sources)
                return [(s.source_id, s.state) for s in last] == [(source_id, ingest_pb2.SOURCE_STATE_FINISHED)]

            await eventually_async(finished, what="the resumed source to finish", timeout_s=60, detail=lambda: last)
            resumed_frames = last[0].frames_published

    frames = await read_topic(kafka_bootstrap, topic, lambda f: f.camera_id == "cam-resume")
    ids: defaultdict[int, set[str]] = defaultdict(set)
    for frame in frames:
        ids[read_stamp(frame.image)].add(frame.frame_id)
    assert sorted(ids) == list(range(count)), "frames of the video lost"
    assert all(len(v) == 1 for v in ids.values()), "a re-published frame got a new id"
    # Resumed at the saved offset, not from the start: only the unsaved tail is sent twice.
    assert resumed_frames <= count - 10 and len(frames) <= count + 8, (resumed_frames, len(frames))


def _manager(tmp_path: Path, roots: list[Path]) -> SourceManager:
    metrics = IngestorMetrics(Metrics("ingestor"))
    # Never started: the sources below fail before they publish anything.
    publisher = Publisher(PublisherOptions("127.0.0.1:1", "t", 1, False, 1, 0.1, 0.1), metrics)
    options = SourceOptions(
        max_sources=4,
        max_image_bytes=1 << 20,
        jpeg_quality=90,
        stream=StreamOptions(open_timeout_ms=200, read_timeout_ms=200, reconnect_max_s=1),
        stream_policy=StreamPolicy([]),
    )
    return SourceManager(publisher, PathPolicy(roots), options, metrics, StateStore(tmp_path / "state"))


async def test_a_saved_source_that_cannot_be_reopened_is_failed_kept_and_forgotten_on_stop(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    saved = [
        SavedSource("src-gone", "folder", str(root / "gone"), "cam-a", 1.0, False, Position(after="x", seq=3)),
        SavedSource("src-out", "video", "/etc/passwd", "cam-b", 1.0, False, Position(index=2)),
        SavedSource("src-cam", "stream", "rtsp://user:pw@10.1.2.3/x", "cam-c", 1.0, False, Position()),
    ]
    StateStore(tmp_path / "state").write(saved)
    manager = _manager(tmp_path, [root])
    await manager.restore()
    listed = {s.source_id: s for s in manager.list_all()}
    assert {k: s.state for k, s in listed.items()} == {k.source_id: "failed" for k in saved}
    assert all(s.error.startswith("not resumed after the restart: ") for s in listed.values())
    assert "pw" not in listed["src-cam"].error + listed["src-cam"].spec.uri, "a stream password shown"
    await manager.save()
    # Kept as they were, for the next start (the folder may be mounted again, the camera back).
    assert StateStore(tmp_path / "state").load() == saved
    await manager.stop("src-gone")
    assert [s.source_id for s in StateStore(tmp_path / "state").load()] == ["src-out", "src-cam"]
    await manager.close()
