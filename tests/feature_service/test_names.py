"""Issue 16, hole 5: camera ids like ``cam1:cars`` must not reach Redis, where they would name
another camera's keys (``carmesh:camera:cam1:cars`` is camera cam1's car-count hash). Requests
with such names are INVALID_ARGUMENT (reason INVALID_NAME); records of older producers already
in Kafka go to the dead-letter topic (frames) or are dropped (detections), never crashing the
consumers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime

import cv2
import grpc
import numpy as np
import pytest
import redis.asyncio as aioredis
from aiokafka import ConsumerRecord
from google.rpc import status_pb2

from carmesh.v1 import common_pb2, feature_pb2, feature_pb2_grpc
from feature_service.detections import Unusable, parse_run
from feature_service.online import camera_keys
from feature_service.validation import Limits, Rejection, validate
from kit.clients import insecure_channel
from kit.kafka import DETECTIONS_TOPIC, ensure_topics
from tests.feature_service.support import (
    FreshDatabase,
    Run,
    daemon_args,
    fetchval,
    metric,
    produce,
    produce_frames,
    read_dlq,
)
from tests.helpers import DaemonProcess
from tests.status_details import details_of, fields_of
from tests.support import eventually_async

pytestmark = pytest.mark.integration

BAD_CAMERAS = ("cam1:cars", "cam 1", "cam1*", "-cam", "a/b", "x" * 129, "caméra")


def _jpeg() -> bytes:
    ok, data = cv2.imencode(".jpg", np.random.default_rng(3).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    assert ok
    return data.tobytes()


def _frame(frame_id: str, camera_id: str) -> common_pb2.Frame:
    frame = common_pb2.Frame(frame_id=frame_id, camera_id=camera_id, image=_jpeg())
    frame.captured_at.FromDatetime(datetime.now(UTC))
    return frame


@pytest.mark.parametrize("camera_id", BAD_CAMERAS)
def test_frames_and_detections_with_bad_camera_ids_are_unusable(camera_id: str) -> None:
    limits = Limits(max_image_bytes=1_000_000, max_image_pixels=1_000_000)
    rejection = validate(_frame("f-1", camera_id), 0, limits)
    assert isinstance(rejection, Rejection) and rejection.code == "invalid_name"
    dataset = validate(common_pb2.Frame(frame_id="f", camera_id="ok", dataset="apollo:2", image=_jpeg()), 0, limits)
    assert isinstance(dataset, Rejection) and dataset.code == "invalid_name"
    message = common_pb2.FrameDetections(
        frame_id="f", camera_id=camera_id, model=common_pb2.ModelRef(name="m", version="1")
    )
    record = ConsumerRecord("t", 0, 0, 0, 0, b"", message.SerializeToString(), None, 0, 0, [])
    with pytest.raises(Unusable) as info:
        parse_run(record)
    assert info.value.code == "invalid_name"
    with pytest.raises(ValueError, match="is not valid: use"):
        camera_keys(camera_id)


def test_stored_sources_never_keep_a_password() -> None:
    frame = _frame("f-1", "cam-1")
    frame.source = "rtsp://viewer:s3cret@cam.example/live"
    stored = validate(frame, 0, Limits(max_image_bytes=1_000_000, max_image_pixels=1_000_000))
    assert not isinstance(stored, Rejection) and stored.source == "rtsp://viewer:***@cam.example/live"


def test_redis_keys_come_from_one_function() -> None:
    keys = camera_keys("cam1")
    assert (keys.features, keys.dets, keys.cars) == (
        "carmesh:camera:cam1",
        "carmesh:camera:cam1:dets",
        "carmesh:camera:cam1:cars",
    )


@pytest.fixture(scope="module")
def daemon(
    feature_db: FreshDatabase, redis_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DaemonProcess, FreshDatabase, str, str]]:
    asyncio.run(ensure_topics(kafka_bootstrap))
    args = daemon_args(
        dsn=feature_db.dsn,
        redis_url=redis_url,
        kafka_bootstrap=kafka_bootstrap,
        blob_dir=tmp_path_factory.mktemp("blobs"),
    )
    with DaemonProcess("feature_service", args) as proc:
        yield proc, feature_db, kafka_bootstrap, redis_url


def _status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    [trailer] = [v for k, v in error.trailing_metadata() or () if k == "grpc-status-details-bin"]
    assert isinstance(trailer, bytes)
    return status_pb2.Status.FromString(trailer)


async def test_bad_camera_ids_in_kafka_never_reach_redis(daemon: tuple[DaemonProcess, FreshDatabase, str, str]) -> None:
    proc, db, bootstrap, redis_url = daemon
    run = Run.new("names")
    good, bad = run.camera_id, f"{run.camera_id}:cars"
    # Older producers did not check ids: a frame of camera "<good>:cars" would write camera <good>'s car counts.
    await produce_frames(bootstrap, [_frame(f"{run.tag}-bad", bad), _frame(f"{run.tag}-good", good)])
    stored = await eventually_async(
        lambda: fetchval(db.dsn, "SELECT count(*) FROM frames WHERE frame_id = $1", f"{run.tag}-good"),
        what="the good frame stored",
        timeout_s=60,
    )
    assert stored == 1
    (record,) = await read_dlq(bootstrap, bad.encode(), 1)
    assert dict(record.headers)["carmesh-reason"].decode().startswith("invalid_name: camera_id: ")
    assert await fetchval(db.dsn, "SELECT count(*) FROM frames WHERE camera_id = $1", bad) == 0

    detections = common_pb2.FrameDetections(
        frame_id=f"{run.tag}-good", camera_id=f"{good}:x", model=common_pb2.ModelRef(name="m", version="1")
    )
    before = metric(proc.metrics_port or 0, "carmesh_feature_detections_rejected_total", reason="invalid_name")
    await produce(bootstrap, DETECTIONS_TOPIC, [(detections.camera_id.encode(), detections.SerializeToString())])
    await eventually_async(
        lambda: (
            metric(proc.metrics_port or 0, "carmesh_feature_detections_rejected_total", reason="invalid_name") > before
        ),
        what="the detections with a bad camera id dropped",
        timeout_s=60,
    )
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.exists(f"carmesh:camera:{good}") == 1
        for key in (f"carmesh:camera:{good}:cars", f"carmesh:camera:{good}:x", f"carmesh:camera:{good}:x:dets"):
            assert await client.exists(key) == 0, key
    finally:
        await client.aclose()


async def test_requests_with_bad_names_are_invalid_argument(
    daemon: tuple[DaemonProcess, FreshDatabase, str, str],
) -> None:
    async with insecure_channel(daemon[0].address) as channel:
        stub = feature_pb2_grpc.FeatureServiceStub(channel)
        calls = [
            ("camera_id", stub.GetOnlineFeatures(feature_pb2.GetOnlineFeaturesRequest(camera_id="cam1:cars"))),
            ("name", stub.CreateDatasetSnapshot(feature_pb2.CreateDatasetSnapshotRequest(name="snap:1"))),
            (
                "filter.camera_ids",
                stub.CreateDatasetSnapshot(
                    feature_pb2.CreateDatasetSnapshotRequest(
                        name="snap", filter=feature_pb2.DatasetFilter(camera_ids=["cam1:cars"])
                    )
                ),
            ),
            ("name", stub.ListDatasetSnapshots(feature_pb2.ListDatasetSnapshotsRequest(name="a b"))),
        ]
        for field, call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, info.value.details())
            status = _status(info.value)
            assert details_of(status)["ErrorInfo"].reason == "INVALID_NAME" and fields_of(status) == [field]
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            async for _ in stub.StreamDataset(feature_pb2.StreamDatasetRequest(name="snap:1")):
                pass
        assert streamed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
