"""Helpers for the feature service tests: real apollo-cars frames as Frame messages, a fresh
PostgreSQL database per module, the daemon's arguments, and Kafka/PostgreSQL probes."""

from __future__ import annotations

import asyncio
import hashlib
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client.parser import text_string_to_metric_families

from carmesh.v1 import common_pb2
from kit.kafka import FRAMES_DLQ_TOPIC, FRAMES_TOPIC, create_consumer, create_producer
from tests.support import eventually_async

FRAMES_GROUP = "carmesh-feature-service"
IGNORE_CLASS = "ignore"  # apollo-cars marks don't-care regions with this class
BASE_TIME = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Label:
    class_name: str
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def ignore(self) -> bool:
        return self.class_name == IGNORE_CLASS


@dataclass(frozen=True)
class ApolloFrame:
    split: str  # train or val
    stem: str
    image: bytes
    labels: tuple[Label, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.image).hexdigest()


def read_labels(path: Path) -> tuple[Label, ...]:
    labels = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 8:
            labels.append(Label(parts[0], *(float(v) for v in parts[4:8])))
    return tuple(labels)


def load_apollo(shared: Path) -> list[ApolloFrame]:
    root = shared / "data" / "apollo-cars"
    frames = []
    for split in ("train", "val"):
        # File numbers have gaps: glob, never count.
        for image in sorted((root / split / "images").glob("*.jpg")):
            labels = read_labels(root / split / "labels" / f"{image.stem}.txt")
            frames.append(ApolloFrame(split, image.stem, image.read_bytes(), labels))
    return frames


def class_ids(frames: Iterable[ApolloFrame]) -> dict[str, int]:
    names = sorted({label.class_name for f in frames for label in f.labels})
    return {name: i for i, name in enumerate(names)}


def timestamp(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


@dataclass(frozen=True)
class Run:
    """Names that keep one test's frames apart from every other test's on the shared topics."""

    tag: str

    @classmethod
    def new(cls, prefix: str) -> Run:
        return cls(f"{prefix}-{uuid.uuid4().hex[:8]}")

    @property
    def camera_id(self) -> str:
        return f"cam-{self.tag}"

    @property
    def dataset(self) -> str:
        return f"apollo-{self.tag}"

    def frame_id(self, frame: ApolloFrame) -> str:
        return f"{self.tag}-{frame.split}-{frame.stem}"


def apollo_message(
    run: Run, frame: ApolloFrame, index: int, ids: dict[str, int], claim_size: bool = True
) -> common_pb2.Frame:
    return common_pb2.Frame(
        frame_id=run.frame_id(frame),
        camera_id=run.camera_id,
        seq=index,
        captured_at=timestamp(BASE_TIME + timedelta(seconds=index)),
        encoding=common_pb2.IMAGE_ENCODING_JPEG,
        image=frame.image,
        width=1920 if claim_size else 0,
        height=1080 if claim_size else 0,
        annotations=[
            common_pb2.Annotation(
                box=common_pb2.BoundingBox(x1=lb.x1, y1=lb.y1, x2=lb.x2, y2=lb.y2),
                class_id=ids[lb.class_name],
                class_name=lb.class_name,
                ignore=lb.ignore,
            )
            for lb in frame.labels
        ],
        source=f"apollo-cars/{frame.split}/images/{frame.stem}.jpg",
        dataset=run.dataset,
        split=common_pb2.SPLIT_TRAIN if frame.split == "train" else common_pb2.SPLIT_VAL,
    )


async def produce(bootstrap: str, topic: str, messages: Iterable[tuple[bytes, bytes]], pause_s: float = 0.0) -> None:
    """Sends (key, value) pairs, waiting for each acknowledgement; ``pause_s`` paces them."""
    producer = create_producer(bootstrap, client_id="feature-tests", idempotence=False)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value, key=key)
            if pause_s:
                await asyncio.sleep(pause_s)  # sleep is the test: a producer paced on purpose (a slow camera)
    finally:
        await producer.stop()


async def produce_frames(bootstrap: str, frames: Iterable[common_pb2.Frame], pause_s: float = 0.0) -> None:
    await produce(bootstrap, FRAMES_TOPIC, ((f.camera_id.encode(), f.SerializeToString()) for f in frames), pause_s)


async def read_dlq(
    bootstrap: str, key: bytes, count: int, timeout_s: float = 60.0, topic: str = FRAMES_DLQ_TOPIC
) -> list[ConsumerRecord]:
    """The first ``count`` dead-lettered records with ``key``, read by a group of its own."""
    consumer = create_consumer(
        bootstrap, topic, group_id=f"dlq-reader-{uuid.uuid4().hex[:8]}", client_id="feature-tests"
    )
    await consumer.start()
    found: list[ConsumerRecord] = []

    async def read_more() -> bool:
        batches = await consumer.getmany(timeout_ms=500)
        found.extend(r for recs in batches.values() for r in recs if r.key == key)
        return len(found) >= count

    try:
        # getmany() itself waits for records: no pause between tries.
        await eventually_async(
            read_more, what=f"{count} dead-lettered records keyed {key!r}", timeout_s=timeout_s, interval_s=0
        )
    finally:
        await consumer.stop()
    return found


async def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int = 4) -> dict[int, int | None]:
    """The group's committed offsets, read without joining the group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


def with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


@dataclass
class FreshDatabase:
    """A database of its own on the test PostgreSQL server, dropped afterwards."""

    server_dsn: str
    name: str

    @property
    def dsn(self) -> str:
        return with_database(self.server_dsn, self.name)

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(with_database(self.server_dsn, "postgres"))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def create(self) -> FreshDatabase:
        asyncio.run(self._admin(f'CREATE DATABASE "{self.name}"'))
        return self

    def drop(self) -> None:
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))


def fresh_database(server_dsn: str, prefix: str) -> Iterator[FreshDatabase]:
    db = FreshDatabase(server_dsn, f"{prefix}_{uuid.uuid4().hex[:8]}").create()
    try:
        yield db
    finally:
        db.drop()


async def fetch(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def fetchval(dsn: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def daemon_args(
    *,
    dsn: str,
    redis_url: str,
    kafka_bootstrap: str,
    blob_dir: Path,
    extra: Iterable[str] = (),
) -> list[str]:
    return [
        "--postgres-dsn",
        dsn,
        "--redis-url",
        redis_url,
        "--kafka-bootstrap",
        kafka_bootstrap,
        "--no-kafka-idempotence",
        # A SIGKILLed member is replaced after this; short keeps the crash test quick.
        "--kafka-session-timeout-ms",
        "3000",
        "--blob-dir",
        str(blob_dir),
        "--retry-initial-s",
        "0.2",
        "--retry-max-s",
        "1",
        "--poll-timeout-ms",
        "200",
        *extra,
    ]


def blob_files(blob_dir: Path) -> dict[str, bytes]:
    """Every blob under sha256/, by file name (its claimed digest)."""
    return {p.name: p.read_bytes() for p in (blob_dir / "sha256").rglob("*") if p.is_file()}


def samples(port: int, name: str, **labels: str) -> list[float]:
    """Every sample of ``name`` whose labels include ``labels``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return [
        float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]


def metric(port: int, name: str, **labels: str) -> float:
    """The value of the first sample matching on the daemon's /metrics (0 when absent)."""
    values = samples(port, name, **labels)
    return values[0] if values else 0.0


def metric_sum(port: int, name: str, **labels: str) -> float:
    """The sum over every label set, e.g. over all DLQ reasons (0 when none)."""
    return sum(samples(port, name, **labels))
