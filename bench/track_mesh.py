"""The tracker daemon's rate for ``make bench-track``: a backlog of FrameDetections of several
synthetic street cameras on a fresh Tansu, consumed by one tracker pinned to one core, with
PostgreSQL and Redis as ``make up`` runs them; frames/s from its first commit to its last."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaProducer

from bench.common import free_port
from carmesh.v1 import common_pb2
from devstack import services
from devstack.procs import Process

REPO = Path(__file__).resolve().parents[1]


def _messages(camera: str, seed: int, start_s: float) -> list[bytes]:
    from tracking.scenario import CLASS_NAMES, DetectionNoise, make_scenario, simulate_detections

    out = []
    for frame in simulate_detections(make_scenario(seed).truth(), DetectionNoise(), seed=seed):
        message = common_pb2.FrameDetections(frame_id=f"{camera}-{frame.seq}", camera_id=camera, seq=frame.seq)
        at = start_s + frame.timestamp_s
        message.captured_at.seconds, message.captured_at.nanos = int(at), round((at % 1) * 1e9)
        for (x1, y1, x2, y2), score, class_id in zip(frame.boxes_xyxy, frame.scores, frame.class_ids, strict=True):
            detection = message.detections.add(score=score, class_id=int(class_id), class_name=CLASS_NAMES[class_id])
            detection.box.x1, detection.box.y1, detection.box.x2, detection.box.y2 = x1, y1, x2, y2
        out.append(message.SerializeToString())
    return out


async def _fill(bootstrap: str, topic: str, cameras: dict[str, int]) -> int:
    from kit.kafka import ensure_topics

    await ensure_topics(bootstrap, {topic: 4})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        total = 0
        for camera, seed in cameras.items():
            for value in _messages(camera, seed, time.time()):
                await producer.send(topic, value, key=camera.encode())
                total += 1
        await producer.flush()
        return total
    finally:
        await producer.stop()


async def _layouts(dsn: str, cameras: dict[str, int]) -> None:
    from tracker.store import TrackerStore
    from tracking.scenario import HEIGHT, WIDTH, make_scenario

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        store = TrackerStore(pool)
        await store.create_schema()
        for camera, seed in cameras.items():
            await store.set_layout(camera, make_scenario(seed).layout, WIDTH, HEIGHT)
    finally:
        await pool.close()


async def _progress(dsn: str, topic: str, total: int, timeout_s: float) -> tuple[int, float, float]:
    """(frames already committed at the first commit seen, its time, the time all were committed)."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout_s
        first: tuple[int, float] | None = None
        while time.monotonic() < deadline:
            done = int(
                await conn.fetchval("SELECT coalesce(sum(next_offset), 0) FROM tracker_offsets WHERE topic = $1", topic)
            )
            now = time.perf_counter()
            if done and first is None:
                first = (done, now)
            if done >= total and first is not None:
                return first[0], first[1], now
            await asyncio.sleep(0.02)
        raise RuntimeError(f"the tracker committed fewer than {total} frames in {timeout_s:.0f}s")
    finally:
        await conn.close()


def _start(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


async def tracker_rate(cameras: int = 4) -> tuple[float, int]:
    """Frames/s of one tracker replica on one core, and the frames it measured them over."""
    run_dir = Path(tempfile.mkdtemp(prefix="carmesh-bench-track-"))
    os.chmod(run_dir, 0o755)
    cfg = services.StackConfig(
        run_dir=run_dir,
        ports=services.Ports(redis=free_port(), postgres=free_port(), kafka=free_port(), mlflow=free_port()),
    )
    procs: list[Process] = [services.tansu(cfg), services.postgres(cfg), services.redis(cfg)]
    topic = f"bench.detections.{os.urandom(3).hex()}"
    feed = {f"bench-street-{i}": i for i in range(cameras)}
    daemon: subprocess.Popen[bytes] | None = None
    try:
        for proc in procs:
            proc.start()
            proc.wait_ready()
        services.create_databases(cfg)
        dsn = cfg.postgres_dsn_with_password()
        await _layouts(dsn, feed)
        total = await _fill(cfg.kafka_bootstrap, topic, feed)
        argv = [sys.executable, "-m", "tracker", "--grpc-port", "0", "--metrics-port", "0", "--mesh-plaintext"]
        argv += ["--kafka-bootstrap", cfg.kafka_bootstrap, "--no-kafka-idempotence", "--detections-topic", topic]
        argv += ["--events-topic", f"{topic}.events", "--postgres-dsn", dsn, "--redis-url", cfg.redis_url]
        argv += ["--redis-password-file", str(cfg.redis_password_file)]
        daemon = await asyncio.to_thread(_start, argv, run_dir / "tracker.log")
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(daemon.pid, {min(os.sched_getaffinity(0))})
        first_done, first_t, last_t = await _progress(dsn, topic, total, timeout_s=300)
        return (total - first_done) / (last_t - first_t), total - first_done
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(timeout=60)
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
