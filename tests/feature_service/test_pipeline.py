"""The feature service as a process against real Tansu, PostgreSQL and Redis: apollo-cars frames
through Kafka into the stores, the dead-letter topic, snapshots streamed back, online features
and model predictions."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
import redis.asyncio as aioredis

from carmesh.v1 import common_pb2, feature_pb2, feature_pb2_grpc
from kit.clients import insecure_channel
from kit.kafka import DETECTIONS_DLQ_TOPIC, DETECTIONS_TOPIC, FRAMES_TOPIC, ensure_topics
from tests.feature_service.support import (
    BASE_TIME,
    ApolloFrame,
    FreshDatabase,
    Run,
    apollo_message,
    blob_files,
    class_ids,
    daemon_args,
    fetch,
    fetchval,
    metric,
    produce,
    produce_frames,
    read_dlq,
    samples,
    timestamp,
)
from tests.helpers import DaemonProcess
from tests.paging import assert_bad_pages_refused, assert_pages_cover
from tests.support import eventually_async

pytestmark = pytest.mark.integration


@dataclass
class Daemon:
    proc: DaemonProcess
    blob_dir: Path
    metrics_port: int
    dsn: str
    bootstrap: str
    redis_url: str


@dataclass
class Stored:
    """The apollo-cars frames this module sent, and the corrupt ones among them."""

    run: Run
    frames: list[ApolloFrame]
    ids: dict[str, int]
    corrupt: dict[str, bytes]  # expected reason code -> the record value sent


@pytest.fixture(scope="module")
def daemon(
    feature_db: FreshDatabase, redis_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    asyncio.run(ensure_topics(kafka_bootstrap))
    blob_dir = tmp_path_factory.mktemp("blobs")
    args = daemon_args(
        dsn=feature_db.dsn,
        redis_url=redis_url,
        kafka_bootstrap=kafka_bootstrap,
        blob_dir=blob_dir,
        extra=["--frames-batch-size", "16"],
    )
    with DaemonProcess("feature_service", args) as proc:
        assert proc.metrics_port is not None
        yield Daemon(proc, blob_dir, proc.metrics_port, feature_db.dsn, kafka_bootstrap, redis_url)


def _corrupt_frames(run: Run, good: ApolloFrame) -> dict[str, bytes]:
    def frame(**fields: object) -> bytes:
        base: dict[str, object] = {
            "frame_id": f"{run.tag}-corrupt-{len(fields)}-{sorted(fields)}",
            "camera_id": run.camera_id,
            "image": good.image,
            "dataset": run.dataset,
        }
        base.update(fields)
        return common_pb2.Frame(**base).SerializeToString()  # type: ignore[arg-type]

    png_bomb = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (100_000).to_bytes(4, "big") * 2 + b"\x08\x00\x00\x00\x00"
    return {
        "undecodable": frame(frame_id=f"{run.tag}-corrupt-truncated", image=good.image[: len(good.image) // 2]),
        "size_mismatch": frame(frame_id=f"{run.tag}-corrupt-size", width=1280, height=720),
        "missing_field": frame(frame_id=""),
        "bad_protobuf": b"\xff\xff\xff\xff not a frame",
        "too_many_pixels": frame(frame_id=f"{run.tag}-corrupt-bomb", image=png_bomb),
        "bad_annotation": frame(
            frame_id=f"{run.tag}-corrupt-box",
            annotations=[common_pb2.Annotation(class_name="car", box=common_pb2.BoundingBox(x1=10, x2=5, y2=3))],
        ),
    }


@pytest.fixture(scope="module")
def stored(daemon: Daemon, apollo: list[ApolloFrame]) -> Stored:
    run = Run.new("pipe")
    ids = class_ids(apollo)
    corrupt = _corrupt_frames(run, apollo[0])
    key = run.camera_id.encode()
    messages = [
        (key, apollo_message(run, f, i, ids, claim_size=i % 3 != 0).SerializeToString()) for i, f in enumerate(apollo)
    ]
    # Corrupt records spread among the good ones, all on the camera's one partition.
    for n, value in enumerate(corrupt.values()):
        messages.insert(10 + 25 * n, (key, value))

    async def send_and_wait() -> None:
        await produce(daemon.bootstrap, FRAMES_TOPIC, messages)
        await eventually_async(
            lambda: _count(daemon.dsn, "SELECT count(*) FROM frames WHERE dataset = $1", run.dataset, want=len(apollo)),
            what=f"{len(apollo)} apollo frames stored",
            timeout_s=180,
        )

    asyncio.run(send_and_wait())
    return Stored(run, apollo, ids, corrupt)


async def _count(dsn: str, sql: str, *args: object, want: int) -> bool:
    return await fetchval(dsn, sql, *args) == want


def _stub(daemon: Daemon) -> tuple[grpc.aio.Channel, feature_pb2_grpc.FeatureServiceStub]:
    channel = insecure_channel(daemon.proc.address)
    return channel, feature_pb2_grpc.FeatureServiceStub(channel)


Box = tuple[str, bool, tuple[float, ...]]


def _boxes(annotations: list[tuple[str, bool, float, float, float, float]]) -> list[Box]:
    # Boxes are stored as float32: compare at that precision.
    return [(name, ign, tuple(float(np.float32(v)) for v in box)) for name, ign, *box in annotations]


async def test_apollo_frames_stored_once_with_their_boxes(daemon: Daemon, stored: Stored) -> None:
    run = stored.run
    rows = await fetch(daemon.dsn, "SELECT * FROM frames WHERE dataset = $1 ORDER BY seq", run.dataset)
    by_id = {r["frame_id"]: r for r in rows}
    assert sorted(by_id) == sorted(run.frame_id(f) for f in stored.frames)
    # Width and height were claimed for most frames and filled in for the rest.
    assert {(r["width"], r["height"], r["encoding"]) for r in rows} == {(1920, 1080, "jpeg")}
    assert Counter(r["split"] for r in rows) == {"train": 98, "val": 50}

    ann = await fetch(
        daemon.dsn,
        """SELECT a.frame_id, a.class_name, a.ignore, a.x1, a.y1, a.x2, a.y2 FROM annotations a
           JOIN frames f USING (frame_id) WHERE f.dataset = $1 ORDER BY a.frame_id, a.idx""",
        run.dataset,
    )
    got: dict[str, list[tuple[str, bool, tuple[float, ...]]]] = {}
    for a in ann:
        got.setdefault(a["frame_id"], []).append((a["class_name"], a["ignore"], (a["x1"], a["y1"], a["x2"], a["y2"])))
    for frame in stored.frames:
        want = [(lb.class_name, lb.ignore, lb.x1, lb.y1, lb.x2, lb.y2) for lb in frame.labels]
        assert got.get(run.frame_id(frame), []) == _boxes(want), frame.stem
    per_class = Counter(a["class_name"] for a in ann)
    assert per_class == Counter(lb.class_name for f in stored.frames for lb in f.labels)
    assert per_class["car"] > 100

    blobs = blob_files(daemon.blob_dir)
    for frame in stored.frames:
        row = by_id[run.frame_id(frame)]
        assert row["image_sha256"] == frame.sha256
        assert blobs[frame.sha256] == frame.image

    gray = cv2.imdecode(np.frombuffer(stored.frames[5].image, np.uint8), cv2.IMREAD_GRAYSCALE)
    row = by_id[run.frame_id(stored.frames[5])]
    assert row["brightness"] == pytest.approx(gray.mean())
    assert row["contrast"] == pytest.approx(gray.std())
    assert row["sharpness"] == pytest.approx(cv2.Laplacian(gray, cv2.CV_64F).var())
    assert metric(daemon.metrics_port, "carmesh_feature_frames_stored_total") >= len(stored.frames)
    assert samples(daemon.metrics_port, "carmesh_feature_consumer_lag", topic=FRAMES_TOPIC)


async def test_corrupt_frames_land_in_the_dlq_with_a_reason(daemon: Daemon, stored: Stored) -> None:
    records = await read_dlq(daemon.bootstrap, stored.run.camera_id.encode(), len(stored.corrupt))
    assert len(records) == len(stored.corrupt)
    by_reason = {}
    for record in records:
        headers = dict(record.headers)
        code, _, message = headers["carmesh-reason"].decode().partition(": ")
        assert message, headers
        assert headers["carmesh-source-topic"] == FRAMES_TOPIC.encode()
        assert int(headers["carmesh-source-partition"]) >= 0 and int(headers["carmesh-source-offset"]) >= 0
        by_reason[code] = record.value
    assert by_reason == stored.corrupt  # each with the original value, byte for byte
    stored_corrupt = await fetchval(
        daemon.dsn, "SELECT count(*) FROM frames WHERE frame_id LIKE $1", f"{stored.run.tag}-corrupt-%"
    )
    assert stored_corrupt == 0
    assert metric(daemon.metrics_port, "carmesh_feature_frames_dlq_total", reason="undecodable") >= 1


async def test_replayed_frames_are_not_stored_again(daemon: Daemon, stored: Stored) -> None:
    run = stored.run
    annotations_before = await fetchval(
        daemon.dsn,
        "SELECT count(*) FROM annotations a JOIN frames f USING (frame_id) WHERE f.dataset = $1",
        run.dataset,
    )
    duplicates_before = metric(daemon.metrics_port, "carmesh_feature_frames_duplicate_total")
    replay = [apollo_message(run, f, i, stored.ids) for i, f in enumerate(stored.frames[:20])]
    # A new frame with an already stored image (shares its blob), older than everything else.
    marker = apollo_message(run, stored.frames[0], 0, stored.ids)
    marker.frame_id, marker.dataset = f"{run.tag}-marker", ""
    marker.captured_at.CopyFrom(timestamp(BASE_TIME - timedelta(days=1)))
    await produce_frames(daemon.bootstrap, [*replay, marker])
    await eventually_async(
        lambda: _count(daemon.dsn, "SELECT count(*) FROM frames WHERE frame_id = $1", marker.frame_id, want=1),
        what="the marker frame stored",
        timeout_s=60,
    )
    assert await fetchval(daemon.dsn, "SELECT count(*) FROM frames WHERE dataset = $1", run.dataset) == 148
    annotations_after = await fetchval(
        daemon.dsn,
        "SELECT count(*) FROM annotations a JOIN frames f USING (frame_id) WHERE f.dataset = $1",
        run.dataset,
    )
    assert annotations_after == annotations_before
    assert metric(daemon.metrics_port, "carmesh_feature_frames_duplicate_total") - duplicates_before >= 20
    shas = {f.sha256 for f in stored.frames}
    assert shas <= set(blob_files(daemon.blob_dir))


def _labels_of(frame: common_pb2.Frame) -> list[Box]:
    return [(a.class_name, a.ignore, (a.box.x1, a.box.y1, a.box.x2, a.box.y2)) for a in frame.annotations]


async def _stream(
    stub: feature_pb2_grpc.FeatureServiceStub, name: str, split: int, version: str = ""
) -> list[feature_pb2.StreamDatasetResponse]:
    request = feature_pb2.StreamDatasetRequest(name=name, version=version, split=split)
    return [reply async for reply in stub.StreamDataset(request)]


async def test_snapshot_streams_back_identical_images_and_boxes(daemon: Daemon, stored: Stored) -> None:
    run = stored.run
    name = f"snap-{run.tag}"
    channel, stub = _stub(daemon)
    async with channel:
        reply = await stub.CreateDatasetSnapshot(
            feature_pb2.CreateDatasetSnapshotRequest(
                name=name, filter=feature_pb2.DatasetFilter(datasets=[run.dataset]), keep_source_split=True
            )
        )
        snap = reply.snapshot
        assert (snap.name, snap.version, snap.train_frames, snap.val_frames, snap.test_frames) == (name, "1", 98, 50, 0)
        want_classes = sorted({lb.class_name for f in stored.frames for lb in f.labels if not lb.ignore})
        assert list(snap.class_names) == want_classes and "ignore" not in snap.class_names

        by_id = {run.frame_id(f): f for f in stored.frames}
        for split, size in ((common_pb2.SPLIT_TRAIN, 98), (common_pb2.SPLIT_VAL, 50)):
            replies = await _stream(stub, name, split)
            assert [r.index for r in replies] == list(range(size))
            assert {r.total for r in replies} == {size}
            for r in replies:
                source = by_id[r.frame.frame_id]
                assert r.frame.split == split
                assert source.split == ("train" if split == common_pb2.SPLIT_TRAIN else "val")
                assert r.frame.image == source.image
                assert (r.frame.width, r.frame.height) == (1920, 1080)
                want = [(lb.class_name, lb.ignore, lb.x1, lb.y1, lb.x2, lb.y2) for lb in source.labels]
                assert _labels_of(r.frame) == _boxes(want)
        everything = await _stream(stub, name, common_pb2.SPLIT_UNSPECIFIED)
        assert len(everything) == 148 and len({r.frame.frame_id for r in everything}) == 148

        # The next snapshot of a name is its next version; the first stays as it was.
        again = await stub.CreateDatasetSnapshot(
            feature_pb2.CreateDatasetSnapshotRequest(
                name=name,
                filter=feature_pb2.DatasetFilter(datasets=[run.dataset], classes=["bus"]),
                seed=3,
                val_fraction=0.5,
            )
        )
        assert again.snapshot.version == "2" and list(again.snapshot.class_names) == ["bus"]
        listed = await stub.ListDatasetSnapshots(feature_pb2.ListDatasetSnapshotsRequest(name=name))
        assert [(s.version, s.train_frames + s.val_frames) for s in listed.snapshots] == [
            ("1", 148),
            ("2", again.snapshot.train_frames + again.snapshot.val_frames),
        ]
        v1 = await _stream(stub, name, common_pb2.SPLIT_VAL, version="1")
        assert len(v1) == 50
        latest = await _stream(stub, name, common_pb2.SPLIT_UNSPECIFIED)
        with_bus = {run.frame_id(f) for f in stored.frames if any(lb.class_name == "bus" for lb in f.labels)}
        assert {r.frame.frame_id for r in latest} == with_bus
        # A class-filtered snapshot carries that class's boxes (and don't-care regions) only.
        assert {a.class_name for r in latest for a in r.frame.annotations} <= {"bus", "ignore"}


async def test_snapshot_filters_splits_and_errors(daemon: Daemon, stored: Stored) -> None:
    run = stored.run
    channel, stub = _stub(daemon)
    flt = feature_pb2.DatasetFilter(camera_ids=[run.camera_id], datasets=[run.dataset])

    async def create(name: str, **fields: object) -> feature_pb2.DatasetSnapshot:
        request = feature_pb2.CreateDatasetSnapshotRequest(name=name, **fields)  # type: ignore[arg-type]
        return (await stub.CreateDatasetSnapshot(request)).snapshot

    async def split_of(name: str) -> dict[str, int]:
        replies = await _stream(stub, name, common_pb2.SPLIT_UNSPECIFIED)
        return {r.frame.frame_id: r.frame.split for r in replies}

    async with channel:
        a = await create(f"seeded-a-{run.tag}", filter=flt, val_fraction=0.3, seed=11)
        b = await create(f"seeded-b-{run.tag}", filter=flt, val_fraction=0.3, seed=11)
        c = await create(f"seeded-c-{run.tag}", filter=flt, val_fraction=0.3, seed=12)
        assert a.train_frames + a.val_frames == 148 and 20 <= a.val_frames <= 70
        split_a = await split_of(a.name)
        assert split_a == await split_of(b.name)
        assert split_a != await split_of(c.name)

        labelled = await create(
            f"labelled-{run.tag}", filter=feature_pb2.DatasetFilter(datasets=[run.dataset], labelled_only=True)
        )
        with_labels = sum(1 for f in stored.frames if any(not lb.ignore for lb in f.labels))
        assert labelled.train_frames + labelled.val_frames == with_labels

        window = feature_pb2.DatasetFilter(
            datasets=[run.dataset],
            captured_after=timestamp(BASE_TIME + timedelta(seconds=10)),
            captured_before=timestamp(BASE_TIME + timedelta(seconds=20)),
        )
        timed = await create(f"window-{run.tag}", filter=window)
        assert timed.train_frames == 10 and timed.val_frames == 0

        errors = [
            (
                dict(name=f"empty-{run.tag}", filter=feature_pb2.DatasetFilter(datasets=["no-such-dataset"])),
                grpc.StatusCode.FAILED_PRECONDITION,
            ),
            (dict(name="bad name!", filter=flt), grpc.StatusCode.INVALID_ARGUMENT),
            (dict(name=f"frac-{run.tag}", filter=flt, val_fraction=1.5), grpc.StatusCode.INVALID_ARGUMENT),
        ]
        for fields, code in errors:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await create(**fields)  # type: ignore[arg-type]
            assert info.value.code() == code and info.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _stream(stub, f"never-made-{run.tag}", common_pb2.SPLIT_TRAIN)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _stream(stub, a.name, 7)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for version in ("v1", "0", "-1"):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _stream(stub, a.name, common_pb2.SPLIT_TRAIN, version=version)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "snapshot version" in str(
                info.value.details()
            )

        every = feature_pb2.ListDatasetSnapshotsRequest()
        listed = await assert_pages_cover(
            stub.ListDatasetSnapshots, every, "snapshots", lambda s: (s.name, s.version), 5
        )
        assert {a.name, b.name, c.name, labelled.name, timed.name} <= {s.name for s in listed}
        await assert_bad_pages_refused(
            stub.ListDatasetSnapshots, every, feature_pb2.ListDatasetSnapshotsRequest(name=a.name)
        )


async def test_online_features_of_a_camera(daemon: Daemon, stored: Stored) -> None:
    channel, stub = _stub(daemon)
    async with channel:
        reply = await stub.GetOnlineFeatures(feature_pb2.GetOnlineFeaturesRequest(camera_id=stored.run.camera_id))
        camera = reply.camera
        # The newest frame by capture time, not the older marker frame stored after it.
        last = stored.frames[-1]
        assert camera.last_frame_id == stored.run.frame_id(last)
        assert camera.last_seen_at.ToDatetime(tzinfo=UTC) == BASE_TIME + timedelta(seconds=len(stored.frames) - 1)
        gray = cv2.imdecode(np.frombuffer(last.image, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert camera.features.brightness == pytest.approx(gray.mean())
        assert camera.features.contrast == pytest.approx(gray.std())
        assert camera.features.sharpness == pytest.approx(cv2.Laplacian(gray, cv2.CV_64F).var())
        assert (camera.features.width, camera.features.height) == (1920, 1080)
        ttl = await _redis_ttl(daemon, f"carmesh:camera:{stored.run.camera_id}")
        assert 0 < ttl <= 3600  # features_ttl_s

        for camera_id, code in (("no-such-camera", grpc.StatusCode.NOT_FOUND), ("", grpc.StatusCode.INVALID_ARGUMENT)):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetOnlineFeatures(feature_pb2.GetOnlineFeaturesRequest(camera_id=camera_id))
            assert info.value.code() == code


async def _redis_ttl(daemon: Daemon, key: str) -> int:
    client = aioredis.Redis.from_url(daemon.redis_url)
    try:
        return int(await client.ttl(key))
    finally:
        await client.aclose()


def _detections(run: Run, frame: ApolloFrame, version: str, at: datetime) -> common_pb2.FrameDetections:
    dets = [
        common_pb2.Detection(
            box=common_pb2.BoundingBox(x1=lb.x1, y1=lb.y1, x2=lb.x2, y2=lb.y2),
            score=0.9,
            class_id=0,
            class_name=lb.class_name,
        )
        for lb in frame.labels
        if lb.class_name in ("car", "truck")
    ]
    return common_pb2.FrameDetections(
        frame_id=run.frame_id(frame),
        camera_id=run.camera_id,
        model=common_pb2.ModelRef(name=f"detector-{run.tag}", version=version, alias="champion"),
        detections=dets,
        detected_at=timestamp(at),
        image_width=1920,
        image_height=1080,
    )


async def test_predictions_stored_with_model_version_and_car_counts(daemon: Daemon, stored: Stored) -> None:
    run = stored.run
    now = datetime.now(tz=UTC).replace(microsecond=0)
    frames = stored.frames[:10]
    # One old run (outside the minute before the newest) and ten within it.
    old = _detections(run, stored.frames[10], "7", now - timedelta(minutes=5))
    recent = [_detections(run, f, "7", now - timedelta(seconds=10 - i)) for i, f in enumerate(frames)]
    messages = [old, *recent, *recent[:3]]  # the last three are replays
    bad = b"\x01\x02 not detections"
    newer_model = _detections(run, frames[-1], "8", now)
    payloads = [(run.camera_id.encode(), m.SerializeToString()) for m in messages]
    payloads += [(run.camera_id.encode(), bad), (run.camera_id.encode(), newer_model.SerializeToString())]
    await produce(daemon.bootstrap, DETECTIONS_TOPIC, payloads)

    model = f"detector-{run.tag}"
    await eventually_async(
        lambda: _count(daemon.dsn, "SELECT count(*) FROM detection_runs WHERE model_name = $1", model, want=12),
        what="12 detection runs stored",
        timeout_s=60,
    )
    rows = await fetch(
        daemon.dsn,
        """SELECT p.frame_id, p.model_version, p.class_name, p.score, f.camera_id
           FROM predictions p JOIN frames f USING (frame_id) WHERE p.model_name = $1""",
        model,
    )
    want_count = sum(len(m.detections) for m in [old, *recent, newer_model])
    assert len(rows) == want_count  # every prediction joins to its stored frame; replays added nothing
    assert Counter(r["model_version"] for r in rows) == {
        "7": sum(len(m.detections) for m in [old, *recent]),
        "8": len(newer_model.detections),
    }
    assert {r["class_name"] for r in rows} <= {"car", "truck"} and {r["camera_id"] for r in rows} == {run.camera_id}

    channel, stub = _stub(daemon)
    async with channel:
        camera = (await stub.GetOnlineFeatures(feature_pb2.GetOnlineFeaturesRequest(camera_id=run.camera_id))).camera
    cars = [sum(1 for d in m.detections if d.class_name == "car") for m in recent]
    assert camera.last_car_count == cars[-1]
    assert (camera.last_model.name, camera.last_model.version, camera.last_model.alias) == (model, "8", "champion")
    # The minute ending at the newest detection: the ten recent frames, not the old one.
    assert camera.car_count_1m == pytest.approx(sum(cars) / len(cars))
    assert camera.features.width == 1920  # frame features and detection counts live side by side


async def test_rows_postgresql_refuses_do_not_block_the_rest(daemon: Daemon, stored: Stored) -> None:
    """A frame the database refuses (here: a constraint added for the test) is dead-lettered with
    the database's reason, and its batch-mates are stored; the same for detections (their own DLQ)."""
    run = stored.run
    camera = f"{run.camera_id}-poison"
    constraints = {"frames": "test_no_poison_frames", "detection_runs": "test_no_poison_runs"}
    for table, name in constraints.items():
        await fetch(daemon.dsn, f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK (frame_id NOT LIKE '%poison%')")
    try:
        frames = []
        for i, name in enumerate(["poison", "good-a", "good-b"]):
            message = apollo_message(run, stored.frames[i], i, stored.ids)
            message.frame_id, message.camera_id, message.dataset = f"{run.tag}-{name}", camera, ""
            frames.append(message)
        await produce_frames(daemon.bootstrap, frames)
        good_ids = [f"{run.tag}-good-a", f"{run.tag}-good-b"]
        await eventually_async(
            lambda: _count(daemon.dsn, "SELECT count(*) FROM frames WHERE frame_id = ANY($1)", good_ids, want=2),
            what="the poison frame's batch-mates stored",
            timeout_s=60,
        )
        (record,) = await read_dlq(daemon.bootstrap, camera.encode(), 1)
        assert dict(record.headers)["carmesh-reason"].decode().startswith("store_rejected: ")
        assert record.value == frames[0].SerializeToString()

        model = f"poison-model-{run.tag}"
        runs = [
            common_pb2.FrameDetections(
                frame_id=frame_id, camera_id=camera, model=common_pb2.ModelRef(name=model, version="1")
            )
            for frame_id in [f"{run.tag}-poison", *good_ids]
        ]
        await produce(daemon.bootstrap, DETECTIONS_TOPIC, [(camera.encode(), r.SerializeToString()) for r in runs])
        await eventually_async(
            lambda: _count(daemon.dsn, "SELECT count(*) FROM detection_runs WHERE model_name = $1", model, want=2),
            what="the poison detections' batch-mates stored",
            timeout_s=60,
        )
        assert metric(daemon.metrics_port, "carmesh_feature_detections_rejected_total", reason="store_rejected") >= 1
        (dead,) = await read_dlq(daemon.bootstrap, camera.encode(), 1, topic=DETECTIONS_DLQ_TOPIC)
        assert dead.value == runs[0].SerializeToString()
        assert dict(dead.headers)["carmesh-reason"].decode().startswith("store_rejected: PostgreSQL refused")
        assert dict(dead.headers)["carmesh-source-topic"] == DETECTIONS_TOPIC.encode()
    finally:
        for table, name in constraints.items():
            await fetch(daemon.dsn, f"ALTER TABLE {table} DROP CONSTRAINT {name}")
