"""``make bench-ingest``: frames/s end to end (ingestor -> Kafka -> feature_service -> Redis +
PostgreSQL + blobs) beside, in the same run, the raw aiokafka produce+consume rate of the same
payloads and the cost of JPEG-decoding the same frames (the floor any validating pipeline pays).

Everything runs on free 127.0.0.1 ports in a temporary directory: Tansu, PostgreSQL, Redis
(the launchers of ``make up``), then the two daemons as separate processes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import cv2
import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from bench.common import free_port, write_section
from carmesh.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc
from devstack import services
from devstack.procs import Process
from kit.kafka import create_consumer, create_producer, ensure_topics

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def load_frames(folder: Path, count: int, camera_id: str) -> list[common_pb2.Frame]:
    files = sorted(p for p in folder.rglob("*.jpg"))
    if not files:
        raise SystemExit(f"no JPEG images under {folder}")
    frames = []
    run = os.urandom(4).hex()
    for i in range(count):
        data = files[i % len(files)].read_bytes()
        width, height = _jpeg_size(data)
        stamp = Timestamp()
        stamp.GetCurrentTime()
        frames.append(
            common_pb2.Frame(
                frame_id=f"bench-{run}-{i}",
                camera_id=camera_id,
                seq=i,
                captured_at=stamp,
                encoding=common_pb2.IMAGE_ENCODING_JPEG,
                image=data,
                width=width,
                height=height,
                source="bench",
            )
        )
    return frames


def _jpeg_size(data: bytes) -> tuple[int, int]:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.size


def bench_decode(frames: list[common_pb2.Frame]) -> float:
    """Seconds to decode every frame once, on one thread, as a validating consumer must."""
    started = time.perf_counter()
    for frame in frames:
        image = cv2.imdecode(np.frombuffer(frame.image, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None
    return time.perf_counter() - started


async def bench_raw_kafka(bootstrap: str, frames: list[common_pb2.Frame]) -> float:
    """Seconds to produce every serialized Frame (acks=all) and consume them all back."""
    topic = f"carmesh.bench.raw.{os.urandom(3).hex()}"
    await ensure_topics(bootstrap, {topic: 4})
    payloads = [(f.camera_id.encode(), f.SerializeToString()) for f in frames]
    producer = create_producer(bootstrap, client_id="bench-raw", idempotence=False)
    consumer = create_consumer(bootstrap, topic, group_id=f"bench-{topic}", client_id="bench-raw")
    await producer.start()
    await consumer.start()
    try:
        started = time.perf_counter()
        pending = [await producer.send(topic, value, key=key) for key, value in payloads]
        await asyncio.gather(*pending)
        received = 0
        while received < len(payloads):
            batch = await consumer.getmany(timeout_ms=1000)
            received += sum(len(records) for records in batch.values())
        await consumer.commit()
        return time.perf_counter() - started
    finally:
        await consumer.stop()
        await producer.stop()


@contextmanager
def daemon(module: str, args: list[str], port: int, log: Path) -> Iterator[None]:
    argv = [sys.executable, "-m", module, "--host", "127.0.0.1", "--grpc-port", str(port), "--metrics-port", "0"]
    # Plaintext on loopback, asked for explicitly: the figures are of our code path, not of TLS.
    argv += ["--mesh-plaintext", *(["--public-plaintext"] if module == "gateway" else []), *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 90
        while not services.grpc_serving(f"127.0.0.1:{port}"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{module} did not start; see {log}:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=60)


async def _requests(frames: list[common_pb2.Frame]) -> AsyncIterator[ingest_pb2.IngestFramesRequest]:
    for frame in frames:
        yield ingest_pb2.IngestFramesRequest(frame=frame)


async def bench_end_to_end(ingestor: str, dsn: str, frames: list[common_pb2.Frame]) -> float:
    """Seconds from the first frame sent to the ingestor until the last one is stored by feature_service."""
    camera_id = frames[0].camera_id
    conn = await asyncpg.connect(dsn)
    try:
        async with grpc.aio.insecure_channel(ingestor, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
            stub = ingest_pb2_grpc.IngestServiceStub(ch)
            started = time.perf_counter()
            reply = await stub.IngestFrames(_requests(frames), timeout=600)
            if reply.accepted != len(frames):
                raise RuntimeError(f"ingestor accepted {reply.accepted} of {len(frames)} frames")
            stored = 0
            while stored < len(frames):
                stored = await conn.fetchval("select count(*) from frames where camera_id = $1", camera_id) or 0
                await asyncio.sleep(0.05)
            return time.perf_counter() - started
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> str:
    run_dir = Path(tempfile.mkdtemp(prefix="carmesh-bench-ingest-"))
    os.chmod(run_dir, 0o755)
    cfg = services.StackConfig(
        run_dir=run_dir,
        ports=services.Ports(redis=free_port(), postgres=free_port(), kafka=free_port(), mlflow=free_port()),
    )
    procs: list[Process] = [services.tansu(cfg), services.postgres(cfg), services.redis(cfg)]
    try:
        for proc in procs:
            proc.start()
            proc.wait_ready()
        services.create_databases(cfg)
        frames = load_frames(args.images, args.count, camera_id=f"bench-{os.urandom(3).hex()}")
        megabytes = sum(len(f.image) for f in frames) / 1e6
        decode_s = bench_decode(frames)
        raw_s = await bench_raw_kafka(cfg.kafka_bootstrap, frames)
        ingestor_port, feature_port = free_port(), free_port()
        kafka = ["--kafka-bootstrap", cfg.kafka_bootstrap, "--no-kafka-idempotence"]
        with (
            daemon(
                "feature_service",
                [
                    *kafka,
                    "--postgres-dsn",
                    cfg.postgres_dsn,
                    "--redis-url",
                    cfg.redis_url,
                    "--postgres-password-file",
                    str(cfg.postgres_password_file),
                    "--redis-password-file",
                    str(cfg.redis_password_file),
                    "--blob-dir",
                    str(run_dir / "blobs"),
                ],
                feature_port,
                run_dir / "fs.log",
            ),
            daemon("ingestor", kafka, ingestor_port, run_dir / "ingestor.log"),
        ):
            # Warm-up on another camera: consumer-group join and first connections are not throughput.
            warmup = load_frames(args.images, 8, camera_id=f"warmup-{os.urandom(3).hex()}")
            dsn = cfg.postgres_dsn_with_password()
            await bench_end_to_end(f"127.0.0.1:{ingestor_port}", dsn, warmup)
            e2e_s = await bench_end_to_end(f"127.0.0.1:{ingestor_port}", dsn, frames)
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    n = len(frames)
    rows = [
        ("JPEG decode only (cv2.imdecode, 1 thread)", decode_s),
        ("raw aiokafka produce + consume", raw_s),
        ("end to end: ingestor -> Kafka -> feature_service -> PostgreSQL + Redis + blobs", e2e_s),
    ]
    table = ["| path | frames/s | MB/s | seconds | vs decode cost |", "|---|---:|---:|---:|---:|"]
    for label, seconds in rows:
        table.append(
            f"| {label} | {n / seconds:.1f} | {megabytes / seconds:.1f} | {seconds:.2f} | {seconds / decode_s:.2f}x |"
        )
    width, height = frames[0].width, frames[0].height
    return (
        f"## Ingest: end to end vs raw Kafka vs JPEG decode\n\nCommand: `make bench-ingest`  \n"
        f"{n} frames ({width}x{height} JPEG, {megabytes:.0f} MB in all) from `{args.images}`; machine: "
        f"{os.cpu_count()} CPUs, {platform.machine()}; run "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
        + "\n".join(table)
        + "\n\nThe last column is each path's time over the time to decode the same frames once; "
        "the end-to-end path also decodes every frame (validation and features), so 1.0x is its floor."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=Path, default=SHARED / "data" / "apollo-cars")
    parser.add_argument("--count", type=int, default=296, help="frames to send (images are reused)")
    parser.add_argument("--write", type=Path, help="update this markdown file's bench-ingest section")
    args = parser.parse_args(argv)
    report = asyncio.run(run(args))
    print(report)
    if args.write:
        write_section(args.write, "bench-ingest", report)
        print(f"\nwritten to {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
