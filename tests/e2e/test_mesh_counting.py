"""The synthetic street video counted through the whole mesh, all real processes: the ingestor
reads the video file at its frame rate onto a frames topic, the detector (streaming, serving the
street detector from the registry as champion) puts FrameDetections on a detections topic, the
tracker counts; the counts in PostgreSQL, Redis, `carmesh counts` through the gateway and the
events on the events topic must equal the video's truth exactly (docs/tracking.md)."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import asyncpg
import grpc
import pytest
import redis.asyncio as redis
from aiokafka import AIOKafkaConsumer

from carmesh.v1 import ingest_pb2, ingest_pb2_grpc, registry_pb2, registry_pb2_grpc, tracking_pb2
from tests.cli.support import carmesh
from tests.gateway.support import run_gateway
from tests.helpers import DaemonProcess
from tests.support import eventually_async
from tracker.store import TrackerStore
from tracking.core import Track
from tracking.scenario import CLASS_NAMES, make_scenario
from tracking.scoring import score
from tracking.synthetic import write_video

# ~2-4 min on a quiet machine (the detector's CPU decides); a loaded one needs the margin.
pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(900)]

SEED = 0  # the test video; the street detector was trained on other seeds (bench.street_detector)
MODEL = Path(__file__).resolve().parents[2] / "models" / "street-detector" / "model.onnx"
KEY = "mesh-count-key-0123456789abcdef"


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("street-video") / "street.mp4"
    truth = write_video(make_scenario(SEED), out)
    return out, json.loads(truth.read_text())


def _import(data: bytes, name: str) -> Iterator[registry_pb2.ImportModelRequest]:
    yield registry_pb2.ImportModelRequest(
        metadata=registry_pb2.ImportModelMetadata(
            name=name, family=registry_pb2.MODEL_FAMILY_YOLOV8, alias="champion", file_name="model.onnx"
        )
    )
    for at in range(0, len(data), 1 << 20):
        yield registry_pb2.ImportModelRequest(chunk=data[at : at + (1 << 20)])


async def _read_topic(bootstrap: str, topic: str) -> list[bytes]:
    """Every record on ``topic`` now (no consumer group)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        partitions = consumer.assignment()
        while not partitions:
            await consumer.getmany(timeout_ms=100)  # the assignment arrives with the first fetch
            partitions = consumer.assignment()
        end = await consumer.end_offsets(list(partitions))
        values: list[bytes] = []
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                values.extend(r.value for r in records if r.value is not None)
        return values
    finally:
        await consumer.stop()


async def test_the_street_video_counts_exactly_through_the_mesh(
    video: tuple[Path, dict],
    mlflow_uri: str,
    kafka_bootstrap: str,
    postgres_dsn: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    path, truth = video
    expected = {(c["name"], c["direction"], c["class"]): c["count"] for c in truth["counts"]}
    camera, model_name, tag = f"street-{uuid.uuid4().hex[:6]}", f"street-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:8]
    # Topics of its own: other tests of the session leave frames and detections on the default ones.
    frames_topic, detections_topic = f"test.frames.{tag}", f"test.detections.{tag}"
    events_topic, tracks_topic = f"test.events.{tag}", f"test.tracks.{tag}"
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{KEY} ops tracking.read,tracking.write,events\n")
    started = time.monotonic()
    with ExitStack() as stack:
        registry = stack.enter_context(
            DaemonProcess(
                "registry_gateway",
                ["--mlflow-tracking-uri", mlflow_uri, "--cache-dir", str(tmp_path / "reg"), "--poll-interval-s", "0.2"],
                timeout_s=90,
            )
        )
        async with grpc.aio.insecure_channel(registry.address) as channel:
            await registry_pb2_grpc.RegistryServiceStub(channel).ImportModel(
                _import(MODEL.read_bytes(), model_name), timeout=60
            )
        stack.enter_context(
            DaemonProcess(
                "detector",
                [
                    *("--registry-addr", registry.address, "--model-name", model_name),
                    *("--model-cache-dir", str(tmp_path / "det"), "--score-threshold", "0.1"),
                    *("--stream-consumer", "--kafka-bootstrap", kafka_bootstrap, "--no-kafka-idempotence"),
                    *("--stream-group-id", f"detector-{tag}"),
                    *("--frames-topic", frames_topic, "--detections-topic", detections_topic),
                ],
                timeout_s=90,
            )
        )
        tracker = stack.enter_context(
            DaemonProcess(
                "tracker",
                [
                    *("--kafka-bootstrap", kafka_bootstrap, "--group-id", f"tracker-{tag}", "--no-kafka-idempotence"),
                    *("--detections-topic", detections_topic),
                    *("--events-topic", events_topic, "--tracks-topic", tracks_topic, "--batch-size", "32"),
                    *("--postgres-dsn", postgres_dsn, "--redis-url", redis_url),
                ],
            )
        )
        gateway = stack.enter_context(
            run_gateway(keys, registry.address, None, "--tracker-addr", tracker.address)
        ).address
        layout = ["--size", f"{truth['width']}x{truth['height']}"]
        for line in truth["lines"]:
            layout += ["--line", f"{line['name']}:" + ",".join(f"{v:g}" for v in (*line["start"], *line["end"]))]
        for zone in truth["zones"]:
            layout += ["--zone", f"{zone['name']}:" + ",".join(f"{v:g}" for p in zone["polygon"] for v in p)]
        stored = carmesh("cameras", "zones", "set", camera, *layout, gateway=gateway, api_key=KEY)
        assert stored.returncode == 0, stored.stderr

        ingestor = stack.enter_context(
            DaemonProcess(
                "ingestor",
                [
                    *("--kafka-bootstrap", kafka_bootstrap, "--no-kafka-idempotence", "--frames-topic", frames_topic),
                    *("--allowed-roots", str(path.parent)),
                ],
            )
        )
        async with grpc.aio.insecure_channel(ingestor.address) as channel:
            spec = ingest_pb2.SourceSpec(
                kind=ingest_pb2.SOURCE_KIND_VIDEO_FILE, uri=str(path), camera_id=camera, max_fps=truth["fps"]
            )
            await ingest_pb2_grpc.IngestServiceStub(channel).StartSource(
                ingest_pb2.StartSourceRequest(spec=spec), timeout=30
            )

        pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
        try:
            store = TrackerStore(pool)
            frames = len(truth["frames"])

            progress: list[int] = [-1]

            async def last_frame_tracked() -> bool:
                state = (await store.checkpoints([camera])).get(camera)
                progress.append(-1 if state is None else int(state[1]["last_seq"]))
                return progress[-1] == frames - 1

            await eventually_async(
                last_frame_tracked,
                what=f"the tracker to reach frame {frames - 1} of {camera}",
                timeout_s=600,
                interval_s=0.5,
                detail=lambda: f"tracked up to frame {progress[-1]}; tracker log: {tracker.log()[-2000:]}",
            )
            elapsed_s = time.monotonic() - started
            stats = (await store.checkpoints([camera]))[camera][1]["stats"]
            counted = await store.totals(camera)
        finally:
            await pool.close()

        tracks = [tracking_pb2.FrameTracks.FromString(v) for v in await _read_topic(kafka_bootstrap, tracks_topic)]
        events = [tracking_pb2.TrackEvent.FromString(v) for v in await _read_topic(kafka_bootstrap, events_topic)]
        per_frame: list[list[Track]] = [[] for _ in range(frames)]
        for message in tracks:
            if message.camera_id == camera and 0 <= message.seq < frames:
                per_frame[message.seq] = [
                    Track(t.track_id, 0, (t.x1, t.y1, t.x2, t.y2), t.score, 0, 0.0, 0, 0.0) for t in message.tracks
                ]
        truth_frames = make_scenario(SEED).truth()
        scores = score(truth_frames, per_frame, min_visibility=0.5)
        print(
            f"whole mesh, seed {SEED}: counts {dict(sorted(counted.items()))}, truth {dict(sorted(expected.items()))}; "
            f"MOTA {scores.mota:.3f} IDF1 {scores.idf1:.3f} ID switches {scores.id_switches} "
            f"precision {scores.precision:.3f} recall {scores.recall:.3f}; tracker stats {stats}; "
            f"video to last frame tracked {elapsed_s:.0f} s"
        )
        # Every frame of the video went through, in order, none lost on the way.
        assert (stats["frames"], stats["gaps"], stats["out_of_order"]) == (frames, 0, 0), stats
        assert counted == expected

        answer = carmesh("counts", camera, "--since", "1h", "--by", "total", "--json", gateway=gateway, api_key=KEY)
        assert answer.returncode == 0, answer.stderr
        rows = [json.loads(line) for line in answer.stdout.splitlines()]
        assert {(r["name"], r["direction"], r["class"]): r["count"] for r in rows} == expected

        online = redis.from_url(redis_url)
        try:
            stored_fields: dict[bytes, bytes] = await online.hgetall(f"carmesh:tracking:{camera}")  # type: ignore[misc]
            fields = {k.decode(): v.decode() for k, v in stored_fields.items()}
        finally:
            await online.aclose()
        flows: Counter[str] = Counter()
        for (name, direction, _), count in expected.items():
            flows[f"flow_1h:{name}:{direction}"] += count
        assert {k: int(v) for k, v in fields.items() if k.startswith("flow_1h:")} == dict(flows)
        assert {k: int(v) for k, v in fields.items() if k.startswith("occupancy:")} == {
            f"occupancy:{z['name']}": 0 for z in truth["zones"]
        }

        ours = [e for e in events if e.camera_id == camera]
        unique = {e.event_id: e for e in ours}  # at least once: a replay repeats an event_id
        assert Counter((e.name, e.direction, e.class_name) for e in unique.values()) == Counter(expected)
        assert scores.idf1 >= 0.9, scores
        assert set(CLASS_NAMES) >= {k[2] for k in counted}
