"""Streaming detection against a real broker: frames from carmesh.frames.v1 come back as
FrameDetections on carmesh.detections.v1, through the same model and batcher as gRPC Detect."""

from __future__ import annotations

import asyncio
import hashlib
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from detector.engine import ModelRef, ModelSpec
from tests.detector.kafka_support import (
    NOT_A_FRAME,
    DetectionsReader,
    committed_and_end,
    frame,
    jpeg_frames,
    produce,
)
from tests.detector.support import COCO80, jpeg_bytes, running, settings
from tests.helpers import DaemonProcess, free_port
from tests.onnx_factory import write_yolov8_model, yolov8_raw
from tests.support import eventually_async

pytestmark = [pytest.mark.integration]


def _metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return reply.read().decode()


def _once_each(received, frame_ids) -> bool:
    return set(frame_ids) <= {m.frame_id for m in received}


async def test_yolox_nano_answers_every_frame_once_and_skips_corrupt_ones(
    kafka_bootstrap: str, shared_dir: Path
) -> None:
    model = shared_dir / "models" / "yolox_nano.onnx"
    images = sorted((shared_dir / "data" / "apollo-cars" / "val" / "images").glob("*.jpg"))[:8]
    camera = f"cam-{uuid.uuid4().hex[:8]}"
    group = f"detector-{uuid.uuid4().hex[:8]}"
    good = jpeg_frames(camera, images)
    corrupt = frame(camera, 900, b"\xff\xd8 not really a jpeg")
    # The corrupt frame and the non-Frame bytes sit between good frames of the same partition.
    values = [f.SerializeToString() for f in good[:3]] + [corrupt.SerializeToString(), NOT_A_FRAME]
    values += [f.SerializeToString() for f in good[3:]]
    args = [
        "--model-path",
        str(model),
        "--model-family",
        "yolox",
        "--class-names",
        ",".join(COCO80),
        "--max-batch-size",
        "4",
        "--stream-consumer",
        "--kafka-bootstrap",
        kafka_bootstrap,
        "--no-kafka-idempotence",
        "--stream-group-id",
        group,
    ]
    version = hashlib.sha256(model.read_bytes()).hexdigest()[:12]

    async with DetectionsReader(kafka_bootstrap, camera) as reader:
        daemon = DaemonProcess("detector", args)
        with daemon:
            landed = await produce(kafka_bootstrap, camera, values)
            received = await reader.until(lambda got: _once_each(got, [f.frame_id for f in good]))
            metrics = await asyncio.to_thread(_scrape, daemon.metrics_url)
            assert daemon.stop() == 0, daemon.log()[-3000:]

        # Every good frame once, in the order produced (one camera: one partition, sent in offset order).
        assert [m.frame_id for m in received] == [f.frame_id for f in good]
        assert corrupt.frame_id not in {m.frame_id for m in received}
        for message in received:
            assert (message.model.name, message.model.version) == ("yolox_nano", version)
            assert (message.image_width, message.image_height) == (1920, 1080)
            assert message.detected_at.seconds > 0
        # The frame's own seq and capture time travel with its detections (the trackers order by them).
        assert [(m.seq, m.captured_at) for m in received] == [(f.seq, f.captured_at) for f in good]
        with_cars = [m for m in received if any(d.class_name == "car" and d.class_id == 2 for d in m.detections)]
        assert len(with_cars) >= len(good) - 1, [len(m.detections) for m in received]
        # Other tests' frames may share the topic: count at least ours, and find ours by offset in the log.
        assert _metric(metrics, "carmesh_detector_stream_frames_total", outcome="skipped_undecodable") >= 2
        assert _metric(metrics, "carmesh_detector_stream_frames_total", outcome="published") >= len(good)
        log = daemon.log()
        (tp, bad_image_at), (_, not_frame_at) = landed[3], landed[4]
        assert f"skipping frame at {tp.topic}[{tp.partition}]@{bad_image_at}: frame '{corrupt.frame_id}'" in log
        assert f"skipping frame at {tp.topic}[{tp.partition}]@{not_frame_at}: not a carmesh.v1.Frame" in log

        # SIGTERM finished and committed everything of this camera's partition, skipped frames included.
        offsets = await committed_and_end(kafka_bootstrap, group, {tp for tp, _ in landed})
        assert all(committed == end for committed, end in offsets.values()), offsets

        # Restarted in the same group: only the new frames are detected, nothing is answered twice.
        more = jpeg_frames(camera, images[:2], first_seq=100)
        with DaemonProcess("detector", args):
            await produce(kafka_bootstrap, camera, [f.SerializeToString() for f in more])
            received = await reader.until(lambda got: _once_each(got, [f.frame_id for f in more]))
        counts = Counter(m.frame_id for m in received)
        assert [m.frame_id for m in received] == [f.frame_id for f in good + more], counts


async def test_paused_without_a_model_then_hot_reload_versions(kafka_bootstrap: str, tmp_path: Path) -> None:
    raw = yolov8_raw([(32, 32, 20, 20)], [[0.9, 0.05]])
    model = write_yolov8_model(tmp_path / "constant.onnx", raw, (64, 64), ["car", "truck"])
    camera = f"cam-{uuid.uuid4().hex[:8]}"
    # The registry address answers nothing: the detector starts with no model, as before a first promotion.
    cfg = settings(
        registry_addr=f"127.0.0.1:{free_port()}",
        model_cache_dir=tmp_path / "cache",
        stream_consumer=True,
        kafka_bootstrap=kafka_bootstrap,
        kafka_idempotence=False,
        stream_group_id=f"detector-{uuid.uuid4().hex[:8]}",
        registry_retry_initial_s=5.0,
        registry_retry_max_s=5.0,
    )
    image = jpeg_bytes(np.full((90, 160, 3), 80, np.uint8))
    first = [frame(camera, i, image) for i in range(6)]
    second = [frame(camera, 100 + i, image) for i in range(4)]
    async with DetectionsReader(kafka_bootstrap, camera) as reader, running(cfg) as (app, _):
        sample = app.registry.get_sample_value
        await eventually_async(lambda: sample("carmesh_detector_stream_paused") == 1, what="stream paused")
        await produce(kafka_bootstrap, camera, [f.SerializeToString() for f in first])
        # Several poll rounds pass while paused: nothing is taken from the topic.
        await asyncio.sleep(1.5)  # sleep is the test: nothing may be consumed within this window
        assert sample("carmesh_detector_stream_frames_total", {"outcome": "published"}) is None
        assert sample("carmesh_detector_stream_inflight") == 0

        spec = ModelSpec(ref=ModelRef("constant", "1", "champion"), family="yolov8", input_hw=(64, 64))
        await app.manager.activate(model, spec)
        received = await reader.until(lambda got: _once_each(got, [f.frame_id for f in first]))
        assert sample("carmesh_detector_stream_paused") == 0

        # A hot reload: frames after it are answered by the new version, and say so.
        await app.manager.activate(model, ModelSpec(ref=ModelRef("constant", "2", "champion"), family="yolov8"))
        await produce(kafka_bootstrap, camera, [f.SerializeToString() for f in second])
        received = await reader.until(lambda got: _once_each(got, [f.frame_id for f in second]))

    versions = {m.frame_id: m.model.version for m in received}
    assert [versions[f.frame_id] for f in first] == ["1"] * len(first)
    assert [versions[f.frame_id] for f in second] == ["2"] * len(second)
    for message in received:
        assert message.model.alias == "champion"
        assert [(d.class_name, round(d.score, 3)) for d in message.detections] == [("car", 0.9)]
        assert (message.image_width, message.image_height) == (160, 90)
