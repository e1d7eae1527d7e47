"""A store failure that is not an outage no longer stalls the partition: the batch is retried
``--max-store-attempts`` times, then stored record by record, and the record that fails alone
goes to the dead-letter topic with the reason while its neighbours are stored. The failure is
real: the daemon runs under a file-size limit (RLIMIT_FSIZE) smaller than one image, so writing
that image's blob fails with EFBIG every time, as a file system that refuses a file would."""

from __future__ import annotations

import resource
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from carmesh.v1 import common_pb2
from kit.kafka import FRAMES_TOPIC, ensure_topics
from tests.feature_service.support import (
    FreshDatabase,
    committed_offsets,
    daemon_args,
    fetch,
    metric,
    produce_frames,
    read_dlq,
    timestamp,
)
from tests.helpers import DaemonProcess
from tests.support import eventually_async

pytestmark = pytest.mark.integration

FILE_LIMIT_BYTES = 1024 * 1024


def _png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def _frame(camera: str, seq: int, image: bytes) -> common_pb2.Frame:
    return common_pb2.Frame(
        frame_id=f"{camera}-{seq}",
        camera_id=camera,
        seq=seq,
        captured_at=timestamp(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seq)),
        encoding=common_pb2.IMAGE_ENCODING_PNG,
        image=image,
        source="tests/poison",
    )


async def test_a_record_whose_store_always_fails_goes_to_the_dlq_and_the_partition_moves_on(
    feature_db: FreshDatabase, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    await ensure_topics(kafka_bootstrap)
    camera = f"cam-poison-{uuid.uuid4().hex[:8]}"
    group = f"fs-poison-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(7)
    small = _png(np.full((48, 64, 3), 90, np.uint8))
    big = _png(rng.integers(0, 256, (700, 800, 3), dtype=np.uint8))  # noise: PNG cannot shrink it
    assert len(big) > FILE_LIMIT_BYTES > 4 * len(small)
    frames = [
        _frame(camera, 0, small),
        _frame(camera, 1, big),
        _frame(camera, 2, _png(np.full((48, 64, 3), 91, np.uint8))),
    ]
    args = daemon_args(
        dsn=feature_db.dsn,
        redis_url=redis_url,
        kafka_bootstrap=kafka_bootstrap,
        blob_dir=tmp_path / "blobs",
        extra=["--frames-group", group, "--no-consume-detections", "--max-store-attempts", "2"],
    )
    with DaemonProcess("feature_service", args) as daemon:
        assert daemon.proc is not None
        # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG instead of killing the process.
        resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (FILE_LIMIT_BYTES, FILE_LIMIT_BYTES))
        await produce_frames(kafka_bootstrap, frames)
        dead = await read_dlq(kafka_bootstrap, camera.encode(), 1, timeout_s=90)

        async def neighbours_stored() -> bool:
            rows = await fetch(feature_db.dsn, "SELECT frame_id FROM frames WHERE camera_id = $1", camera)
            return {r["frame_id"] for r in rows} == {frames[0].frame_id, frames[2].frame_id}

        await eventually_async(neighbours_stored, what="the poison frame's neighbours stored", timeout_s=60)
        assert metric(daemon.metrics_port or 0, "carmesh_feature_batches_isolated_total", consumer="frames") >= 1
        assert metric(daemon.metrics_port or 0, "carmesh_feature_frames_dlq_total", reason="store_failed") >= 1
        assert daemon.stop() == 0, daemon.log()[-3000:]

    assert len(dead) == 1 and dead[0].value == frames[1].SerializeToString()
    reason = dict(dead[0].headers)["carmesh-reason"].decode()
    assert reason.startswith("store_failed: failed 2 times: OSError: [Errno 27] File too large"), reason
    assert "; alone: OSError: [Errno 27] File too large" in reason, reason
    # Everything is committed, the dead-lettered frame included: a restart reads none of it again.
    headers = dict(dead[0].headers)
    committed = await committed_offsets(kafka_bootstrap, group, FRAMES_TOPIC)
    assert (committed[int(headers["carmesh-source-partition"])] or 0) > int(headers["carmesh-source-offset"])
