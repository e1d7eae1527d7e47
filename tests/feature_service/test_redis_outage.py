"""A Redis outage no longer loses online features silently: the daemon counts it (metrics),
keeps storing frames and detections in PostgreSQL, and once Redis is back rebuilds the online
features of the cameras it could not update from PostgreSQL. The Redis is real and really
stopped; it comes back empty (no persistence), as a restarted cache would."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis.asyncio as aioredis

from carmesh.v1 import common_pb2
from kit.kafka import DETECTIONS_TOPIC, ensure_topics
from tests.feature_service.support import (
    FreshDatabase,
    daemon_args,
    fetchval,
    metric,
    produce,
    produce_frames,
    timestamp,
)
from tests.helpers import DaemonProcess, free_port
from tests.support import eventually, eventually_async

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class RedisServer:
    """A private redis-server on a fixed port that the test stops and starts again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        probe = ["redis-cli", "-p", str(self.port), "ping"]
        eventually(
            lambda: subprocess.run(probe, capture_output=True, check=False).stdout.strip() == b"PONG",
            what="redis-server to answer",
            timeout_s=20,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _frame(camera: str, seq: int) -> common_pb2.Frame:
    ok, data = cv2.imencode(".png", np.full((48, 64, 3), 40 + seq, np.uint8))
    assert ok
    return common_pb2.Frame(
        frame_id=f"{camera}-{seq}",
        camera_id=camera,
        seq=seq,
        captured_at=timestamp(T0 + timedelta(seconds=seq)),
        encoding=common_pb2.IMAGE_ENCODING_PNG,
        image=data.tobytes(),
        source="tests/redis-outage",
    )


def _detections(frame: common_pb2.Frame, cars: int) -> common_pb2.FrameDetections:
    box = common_pb2.BoundingBox(x1=1, y1=2, x2=10, y2=20)
    return common_pb2.FrameDetections(
        frame_id=frame.frame_id,
        camera_id=frame.camera_id,
        model=common_pb2.ModelRef(name="car-detector", version="4", alias="champion"),
        detections=[common_pb2.Detection(box=box, score=0.8, class_id=0, class_name="car") for _ in range(cars)],
        detected_at=timestamp(T0 + timedelta(seconds=frame.seq, milliseconds=200)),
        image_width=64,
        image_height=48,
    )


async def test_after_a_redis_outage_the_lost_online_features_are_rebuilt_from_postgresql(
    feature_db: FreshDatabase, kafka_bootstrap: str, private_redis: RedisServer, tmp_path: Path
) -> None:
    await ensure_topics(kafka_bootstrap)
    camera = f"cam-redis-{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex[:8]
    args = daemon_args(
        dsn=feature_db.dsn,
        redis_url=private_redis.url,
        kafka_bootstrap=kafka_bootstrap,
        blob_dir=tmp_path / "blobs",
        extra=["--frames-group", f"fs-redis-{tag}", "--detections-group", f"fs-redis-det-{tag}"],
    )
    first, second, third = (_frame(camera, i) for i in range(3))
    client = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    key = f"carmesh:camera:{camera}"

    async def stored(table: str, n: int) -> bool:
        sql = f"SELECT count(*) FROM {table} WHERE camera_id = $1"
        return int(await fetchval(feature_db.dsn, sql, camera)) >= n  # type: ignore[call-overload]

    try:
        with DaemonProcess("feature_service", args) as daemon:
            port = daemon.metrics_port or 0
            await produce_frames(kafka_bootstrap, [first])
            await eventually_async(
                lambda: client.hget(key, "last_frame_id"), what="the first frame online", timeout_s=60
            )
            assert metric(port, "carmesh_feature_redis_up") == 1

            private_redis.stop()
            await client.aclose()
            await produce_frames(kafka_bootstrap, [second, third])
            detections = [_detections(second, 2), _detections(third, 3)]
            await produce(
                kafka_bootstrap, DETECTIONS_TOPIC, [(camera.encode(), d.SerializeToString()) for d in detections]
            )
            await eventually_async(lambda: stored("frames", 3), what="the frames stored during the outage")
            await eventually_async(lambda: stored("detection_runs", 2), what="the detections stored during the outage")
            # At least ours: a new group reads the shared topics from the start, other tests' cameras too.
            eventually(
                lambda: metric(port, "carmesh_feature_online_repair_pending") >= 1,
                what="the camera waiting for its rebuild",
                timeout_s=30,
                detail=lambda: daemon.log()[-3000:],
            )
            assert metric(port, "carmesh_feature_redis_outages_total") == 1
            assert metric(port, "carmesh_feature_redis_up") == 0
            assert metric(port, "carmesh_feature_online_write_errors_total", consumer="frames") >= 1

            # Redis comes back empty: what the consumers could not write is rebuilt from PostgreSQL.
            private_redis.start()
            eventually(
                lambda: metric(port, "carmesh_feature_redis_up") == 1,
                what="the rebuild after Redis returned",
                timeout_s=60,
                detail=lambda: daemon.log()[-3000:],
            )
            assert metric(port, "carmesh_feature_online_rebuilt_cameras_total") >= 1
            assert metric(port, "carmesh_feature_online_repair_pending") == 0
            assert metric(port, "carmesh_feature_redis_outages_total") == 1
            assert daemon.stop() == 0, daemon.log()[-3000:]
        client = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
        online = await client.hgetall(key)
    finally:
        await client.aclose()
    assert online["last_frame_id"] == third.frame_id
    assert int(online["last_seen_at_ms"]) == int((T0 + timedelta(seconds=2)).timestamp() * 1000)
    assert (online["width"], online["height"]) == ("64", "48")
    assert online["last_car_count"] == "3"
    assert float(online["car_count_1m"]) == 2.5  # both runs are within the minute
    assert (online["model_name"], online["model_version"], online["model_alias"]) == ("car-detector", "4", "champion")
