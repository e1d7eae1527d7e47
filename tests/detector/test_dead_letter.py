"""A streaming frame whose detection keeps failing (a runtime fault of the model, not a bad image)
goes to carmesh.frames.dlq.v1 with the reason and is committed: never silently dropped, and the
frames after it in the partition are still answered. A real detector process, a real broker."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from kit.kafka import FRAMES_TOPIC
from tests.detector.kafka_support import DetectionsReader, committed_and_end, frame, produce
from tests.detector.support import jpeg_bytes
from tests.feature_service.support import read_dlq
from tests.helpers import DaemonProcess
from tests.onnx_factory import write_failing_yolov8_model, yolov8_raw

pytestmark = [pytest.mark.integration]


async def test_a_frame_that_fails_three_times_is_dead_lettered_with_the_reason(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    raw = yolov8_raw([(32, 32, 20, 20)], [[0.9, 0.05]])
    model = write_failing_yolov8_model(tmp_path / "fails-on-white.onnx", raw, (64, 64), ["car", "truck"])
    camera = f"cam-{uuid.uuid4().hex[:8]}"
    gray = jpeg_bytes(np.full((64, 64, 3), 100, np.uint8))
    white = jpeg_bytes(np.full((64, 64, 3), 255, np.uint8))
    frames = [frame(camera, 0, gray), frame(camera, 1, white), frame(camera, 2, gray)]
    group = f"detector-{uuid.uuid4().hex[:8]}"
    # One image per batch: the white frame fails alone, not with its neighbours.
    args = ["--model-path", str(model), "--max-batch-size", "1", "--stream-consumer"]
    args += ["--kafka-bootstrap", kafka_bootstrap, "--no-kafka-idempotence", "--stream-group-id", group]
    args += ["--stream-retry-max-s", "0.2"]

    async with DetectionsReader(kafka_bootstrap, camera) as reader:
        with DaemonProcess("detector", args) as daemon:
            landed = await produce(kafka_bootstrap, camera, [f.SerializeToString() for f in frames])
            received = await reader.until(
                lambda got: {frames[0].frame_id, frames[2].frame_id} <= {m.frame_id for m in got}
            )
            dead = await read_dlq(kafka_bootstrap, camera.encode(), 1)
            assert daemon.stop() == 0, daemon.log()[-3000:]
            log = daemon.log()

    assert [m.frame_id for m in received] == [frames[0].frame_id, frames[2].frame_id]
    assert len(dead) == 1
    record = dead[0]
    assert record.value == frames[1].SerializeToString()
    headers = dict(record.headers)
    reason = headers["carmesh-reason"].decode()
    assert reason.startswith(f"detect_failed: frame {frames[1].frame_id!r} failed 3 times: "), reason
    assert "out of data bounds" in reason, reason
    assert headers["carmesh-source-topic"] == FRAMES_TOPIC.encode()
    tp, offset = landed[1]
    assert (int(headers["carmesh-source-partition"]), int(headers["carmesh-source-offset"])) == (tp.partition, offset)
    assert headers["carmesh-dead-lettered-by"] == b"detector"
    assert f"frame at {tp.topic}[{tp.partition}]@{offset} sent to carmesh.frames.dlq.v1" in log
    # The dead-lettered frame is committed with the others: a restart does not detect it again.
    offsets = await committed_and_end(kafka_bootstrap, group, {tp})
    assert all(committed == end for committed, end in offsets.values()), offsets
