"""TrackingService on the tracker daemon (real PostgreSQL and Tansu): layouts are validated and
versioned, QueryCounts buckets what the consumer counted, and bad requests name their field."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2

from carmesh.v1 import tracking_pb2, tracking_pb2_grpc
from kit.errors import STATUS_DETAILS_KEY
from tests.helpers import DaemonProcess
from tests.status_details import details_of, fields_of
from tests.support import eventually_async
from tests.tracker.support import Run, expected_counts
from tracking.scenario import make_scenario

pytestmark = [pytest.mark.integration]


def _line(name: str, a: tuple[float, float], b: tuple[float, float]) -> tracking_pb2.CountingLine:
    return tracking_pb2.CountingLine(
        name=name, start=tracking_pb2.Point(x=a[0], y=a[1]), end=tracking_pb2.Point(x=b[0], y=b[1])
    )


def _status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY:
            return status_pb2.Status.FromString(value)
    raise AssertionError(f"no status details in {error}")


@pytest.fixture(scope="module")
def tracker(kafka_bootstrap: str, postgres_dsn: str) -> Iterator[DaemonProcess]:
    topic = f"test.tracker.{uuid.uuid4().hex[:8]}"
    args = ["--kafka-bootstrap", kafka_bootstrap, "--detections-topic", topic, "--postgres-dsn", postgres_dsn]
    args += ["--events-topic", f"{topic}.events", "--no-kafka-idempotence"]
    with DaemonProcess("tracker", [*args, "--group-id", f"g-{topic}"]) as daemon:
        yield daemon


@pytest.fixture
async def stub(tracker: DaemonProcess) -> AsyncIterator[tracking_pb2_grpc.TrackingServiceStub]:
    async with grpc.aio.insecure_channel(tracker.address) as channel:
        yield tracking_pb2_grpc.TrackingServiceStub(channel)


async def test_layouts_are_versioned_and_listed_newest_first(stub) -> None:
    camera = f"gate-{uuid.uuid4().hex[:6]}"
    request = tracking_pb2.SetCameraLayoutRequest(
        camera_id=camera, width=640, height=360, lines=[_line("gate", (320, 300), (320, 150))]
    )
    first = (await stub.SetCameraLayout(request)).layout
    assert (first.version, first.lines[0].name, first.lines[0].end.y) == (1, "gate", 150)
    request.zones.add(
        name="bay", polygon=[tracking_pb2.Point(x=x, y=y) for x, y in [(500, 240), (640, 240), (640, 300)]]
    )
    request.expected_version = 1
    second = (await stub.SetCameraLayout(request)).layout
    assert second.version == 2 and [z.name for z in second.zones] == ["bay"]
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await stub.SetCameraLayout(request)  # still expects 1
    assert stale.value.code() == grpc.StatusCode.ABORTED
    assert details_of(_status(stale.value))["ErrorInfo"].reason == "LAYOUT_VERSION_CONFLICT"
    listed = await stub.ListCameraLayouts(tracking_pb2.ListCameraLayoutsRequest(camera_id=camera))
    assert [layout.version for layout in listed.layouts] == [2, 1]
    assert listed.layouts[0].created_at.seconds > 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r.lines.add().CopyFrom(_line("gate", (0, 0), (700, 0))), "lines[0].end"),
        (lambda r: r.lines.add().CopyFrom(_line("Gate!", (0, 0), (70, 0))), "lines[0].name"),
        (lambda r: r.zones.add(name="bay", polygon=[tracking_pb2.Point(x=1, y=1)]), "zones[0].polygon"),
        (lambda r: setattr(r, "width", 0), "width"),
        (lambda r: setattr(r, "camera_id", "no/slashes"), "camera_id"),
    ],
)
async def test_bad_layouts_are_invalid_argument_naming_the_field(stub, change, field) -> None:
    request = tracking_pb2.SetCameraLayoutRequest(camera_id="cam-1", width=640, height=360)
    change(request)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SetCameraLayout(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(_status(caught.value)) == [field]


async def test_query_counts_validates_its_interval(stub) -> None:
    since = Timestamp()
    since.FromDatetime(datetime.now(UTC))
    for request, field in (
        (tracking_pb2.QueryCountsRequest(camera_id="cam-1"), "since"),
        (tracking_pb2.QueryCountsRequest(camera_id="cam-1", since=since, until=since), "until"),
        (tracking_pb2.QueryCountsRequest(camera_id="cam-1", since=Timestamp(seconds=0)), "bucket"),  # years of minutes
        (tracking_pb2.QueryCountsRequest(camera_id="cam-1", since=since, bucket=99), "bucket"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.QueryCounts(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert fields_of(_status(caught.value)) == [field]


async def test_counts_of_a_streamed_camera_by_minute_and_in_total(
    kafka_bootstrap, postgres_dsn, redis_url, pool
) -> None:
    """One camera's 20 s of the street scene through a tracker, then read back over gRPC, from the
    live events and from the online counts in Redis."""
    run = Run(kafka_bootstrap, postgres_dsn)
    run.args += ["--redis-url", redis_url]
    run.cameras = dict(list(run.cameras.items())[:1])
    await run.setup(pool)
    camera, seed = next(iter(run.cameras.items()))
    start = datetime.now(UTC) - timedelta(minutes=1)
    expected = expected_counts(seed)
    with DaemonProcess("tracker", run.args) as daemon:
        async with grpc.aio.insecure_channel(daemon.address) as channel:
            stub = tracking_pb2_grpc.TrackingServiceStub(channel)
            watch = stub.WatchEvents(tracking_pb2.WatchEventsRequest(camera_id=camera))
            await watch.initial_metadata()  # the watcher is at the end of the events topic
            await run.produce()
            await eventually_async(lambda: _done(run, pool), what="every frame counted", timeout_s=60)
            events = []
            async with asyncio.timeout(30):
                async for reply in watch:
                    events.append(reply.event)
                    if len(events) == sum(expected.values()):
                        break
            watch.cancel()
            since, until = Timestamp(), Timestamp()
            since.FromDatetime(start)
            # The frames' capture times run 20 s ahead of the wall clock at the start: until must cover them.
            until.FromDatetime(start + timedelta(minutes=5))
            total = await stub.QueryCounts(
                tracking_pb2.QueryCountsRequest(
                    camera_id=camera, since=since, until=until, bucket=tracking_pb2.COUNT_BUCKET_TOTAL
                )
            )
            minutes = await stub.QueryCounts(
                tracking_pb2.QueryCountsRequest(camera_id=camera, since=since, until=until)
            )
    assert {(r.name, r.direction, r.class_name): r.count for r in total.rows} == expected
    tracks = await _frame_tracks(kafka_bootstrap, f"{run.topic}.tracks", camera, 600)
    assert [f.seq for f in tracks] == list(range(600))
    ids = {t.track_id for f in tracks for t in f.tracks}
    assert len(ids) == len(make_scenario(seed).vehicles), sorted(ids)  # one track per car, no fragments
    assert all(t.first_seen_seq <= f.seq and t.class_name in ("car", "van") for f in tracks for t in f.tracks)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        online = await client.hgetall(f"carmesh:tracking:{camera}")
    finally:
        await client.aclose()
    assert online["occupancy:bay"] == "0"  # every car has left
    for name, direction in (("gate", "in"), ("gate", "out"), ("bay", "enter"), ("bay", "exit")):
        flow = sum(n for (line, d, _), n in expected.items() if (line, d) == (name, direction))
        assert int(online[f"flow_1h:{name}:{direction}"]) == flow
        assert 0 <= int(online[f"flow_1m:{name}:{direction}"]) <= flow
    assert datetime.fromisoformat(online["updated_at"]) > start
    assert Counter((e.name, e.direction, e.class_name) for e in events) == expected
    assert len({e.event_id for e in events}) == len(events) and {e.camera_id for e in events} == {camera}
    assert all(e.occupancy >= 0 for e in events) and max(e.occupancy for e in events if e.name == "bay") >= 1
    assert {r.bucket_start.seconds for r in total.rows} == {since.seconds}
    by_key: dict[tuple[str, str, str], int] = {}
    for row in minutes.rows:
        assert row.bucket_start.seconds % 60 == 0
        by_key[(row.name, row.direction, row.class_name)] = (
            by_key.get((row.name, row.direction, row.class_name), 0) + row.count
        )
    assert by_key == expected_counts(seed)


async def _done(run: Run, pool) -> bool:
    return await run.done(pool) >= run.total


async def _frame_tracks(bootstrap: str, topic: str, camera: str, count: int) -> list[tracking_pb2.FrameTracks]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        found: list[tracking_pb2.FrameTracks] = []
        async with asyncio.timeout(30):
            while len(found) < count:
                async for record in consumer:
                    if record.key == camera.encode():
                        found.append(tracking_pb2.FrameTracks.FromString(record.value))
                    if len(found) == count:
                        break
        return found
    finally:
        await consumer.stop()


async def test_watch_events_refuses_a_bad_camera_id(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.WatchEvents(tracking_pb2.WatchEventsRequest(camera_id="a/b")):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(_status(caught.value)) == ["camera_id"]
