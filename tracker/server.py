"""TrackingService servicer: proto <-> domain translation only."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from carmesh.v1 import tracking_pb2, tracking_pb2_grpc
from kit.errors import FieldViolation
from kit.names import validate_name
from tracker.errors import BadLayout, BadQuery, LayoutVersionConflict, StoreUnavailable
from tracker.events import EventsFollower
from tracker.store import StoredLayout, TrackerStore
from tracking.geometry import LayoutError, validate_layout

SERVICE_NAME = tracking_pb2.DESCRIPTOR.services_by_name["TrackingService"].full_name
# WatchEvents' response header: the stream follows the topic's end from now on.
FOLLOWING_HEADER = "x-carmesh-following"
MAX_FRAME_SIDE_PX = 16384
DEFAULT_VERSIONS, MAX_VERSIONS = 20, 100
# Longest interval one QueryCounts may cover at minute resolution (a week: 10,080 buckets per series).
MAX_MINUTE_SPAN = timedelta(days=7)
_BUCKETS = {
    tracking_pb2.COUNT_BUCKET_UNSPECIFIED: "minute",
    tracking_pb2.COUNT_BUCKET_MINUTE: "minute",
    tracking_pb2.COUNT_BUCKET_HOUR: "hour",
    tracking_pb2.COUNT_BUCKET_TOTAL: "total",
}


@contextlib.asynccontextmanager
async def _store_errors() -> AsyncIterator[None]:
    try:
        yield
    except (OSError, asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.InterfaceError) as exc:
        raise StoreUnavailable(f"PostgreSQL is unavailable, try again later: {type(exc).__name__}") from exc


def _timestamp(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def layout_to_proto(stored: StoredLayout, created_at: datetime | None = None) -> tracking_pb2.CameraLayout:
    message = tracking_pb2.CameraLayout(
        camera_id=stored.camera_id, version=stored.version, width=stored.width, height=stored.height
    )
    for line in stored.layout.lines:
        message.lines.add(
            name=line.name,
            start=tracking_pb2.Point(x=line.start[0], y=line.start[1]),
            end=tracking_pb2.Point(x=line.end[0], y=line.end[1]),
        )
    for zone in stored.layout.zones:
        message.zones.add(name=zone.name, polygon=[tracking_pb2.Point(x=x, y=y) for x, y in zone.polygon])
    if created_at is not None:
        message.created_at.CopyFrom(_timestamp(created_at))
    return message


def _time(message: Timestamp, field: str) -> datetime:
    try:
        return message.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise BadQuery(f"{field} is not a valid time: {exc}", field=field) from None


class TrackingServicer(tracking_pb2_grpc.TrackingServiceServicer):
    def __init__(self, store: TrackerStore, events: EventsFollower) -> None:
        self._store = store
        self._events = events

    async def WatchEvents(
        self, request: tracking_pb2.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tracking_pb2.WatchEventsResponse]:
        camera_id = validate_name("camera id", request.camera_id, "camera_id")
        # Headers go out once the follower sits at the end of the topic: a client that waits for
        # them misses nothing published afterwards. Not empty: the gateway relays only headers it has.
        headers = ((FOLLOWING_HEADER, camera_id),)
        async for event in self._events.follow(camera_id, lambda: context.send_initial_metadata(headers)):
            yield tracking_pb2.WatchEventsResponse(event=event)

    async def SetCameraLayout(
        self, request: tracking_pb2.SetCameraLayoutRequest, context: grpc.aio.ServicerContext
    ) -> tracking_pb2.SetCameraLayoutResponse:
        camera_id = validate_name("camera id", request.camera_id, "camera_id")
        for name, value in (("width", request.width), ("height", request.height)):
            if not 0 < value <= MAX_FRAME_SIDE_PX:
                raise BadLayout(f"{name} must be 1 to {MAX_FRAME_SIDE_PX} pixels, got {value}", field=name)
        try:
            layout = validate_layout(
                [(x.name, (x.start.x, x.start.y), (x.end.x, x.end.y)) for x in request.lines],
                [(z.name, [(p.x, p.y) for p in z.polygon]) for z in request.zones],
                request.width,
                request.height,
            )
        except LayoutError as exc:
            raise BadLayout(str(exc), violations=[FieldViolation(exc.field, exc.description)]) from None
        async with _store_errors():
            version = await self._store.set_layout(
                camera_id, layout, request.width, request.height, request.expected_version
            )
            if version < 0:
                raise LayoutVersionConflict(
                    f"camera {camera_id}'s layout is no longer version {request.expected_version}: "
                    "list it again and retry",
                    metadata={"expected_version": request.expected_version},
                )
            stored = await self._store.list_layouts(camera_id, 1)
        return tracking_pb2.SetCameraLayoutResponse(layout=layout_to_proto(*stored[0]))

    async def ListCameraLayouts(
        self, request: tracking_pb2.ListCameraLayoutsRequest, context: grpc.aio.ServicerContext
    ) -> tracking_pb2.ListCameraLayoutsResponse:
        camera_id = validate_name("camera id", request.camera_id, "camera_id")
        if not 0 <= request.max_versions <= MAX_VERSIONS:
            raise BadQuery(f"max_versions must be 0 to {MAX_VERSIONS}", field="max_versions")
        async with _store_errors():
            stored = await self._store.list_layouts(camera_id, request.max_versions or DEFAULT_VERSIONS)
        return tracking_pb2.ListCameraLayoutsResponse(layouts=[layout_to_proto(*item) for item in stored])

    async def QueryCounts(
        self, request: tracking_pb2.QueryCountsRequest, context: grpc.aio.ServicerContext
    ) -> tracking_pb2.QueryCountsResponse:
        camera_id = validate_name("camera id", request.camera_id, "camera_id")
        if request.bucket not in _BUCKETS:
            raise BadQuery(f"bucket {request.bucket} is not a CountBucket", field="bucket")
        bucket = _BUCKETS[request.bucket]
        if not request.HasField("since"):
            raise BadQuery("since is required", field="since")
        since = _time(request.since, "since")
        until = _time(request.until, "until") if request.HasField("until") else datetime.now(UTC)
        if until <= since:
            raise BadQuery("until must be after since", field="until")
        if bucket == "minute" and until - since > MAX_MINUTE_SPAN:
            raise BadQuery("minute buckets cover at most 7 days: use hour or total", field="bucket")
        async with _store_errors():
            rows = await self._store.counts(camera_id, since, until, bucket)
        return tracking_pb2.QueryCountsResponse(
            rows=[
                tracking_pb2.CountRow(
                    bucket_start=_timestamp(start), name=name, direction=direction, class_name=cls, count=count
                )
                for start, name, direction, cls, count in rows
            ]
        )
