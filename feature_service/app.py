"""Wires the feature service: blob store, PostgreSQL (migrated), Redis, the two consumer groups
and the gRPC server. SIGTERM: NOT_SERVING, consumers finish and commit their batch, RPCs
drain, then pools close in reverse order of opening."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from carmesh.v1 import feature_pb2_grpc
from feature_service import db
from feature_service.blob_gc import BlobCollector
from feature_service.blobs import BlobStore, LocalBlobStore, S3BlobStore
from feature_service.config import Settings
from feature_service.consumer import Backoff, ConsumerLoop
from feature_service.datasets import Datasets
from feature_service.detections import DetectionHandler
from feature_service.frames import FrameHandler
from feature_service.metrics import FeatureMetrics
from feature_service.offline import OfflineStore
from feature_service.online import OnlineStore
from feature_service.repair import OnlineRepair
from feature_service.server import SERVICE_NAME, FeatureServicer
from feature_service.validation import Limits
from kit import mesh_tls
from kit.daemon import Context, Daemon, DaemonSpec
from kit.kafka import DETECTIONS_TOPIC, FRAMES_TOPIC, create_consumer, create_producer, ensure_topics
from kit.mesh_tls import CallerPolicy
from kit.secret_files import read_password
from kit.server import Server

# The gateway (for clients) and the trainer (snapshots to train on) call the feature service.
CALLERS = CallerPolicy(default=frozenset({mesh_tls.GATEWAY, mesh_tls.TRAINER}))

log = logging.getLogger("feature_service")


def open_blob_store(cfg: Settings) -> BlobStore:
    if cfg.blob_store == "s3":
        return S3BlobStore(cfg.s3_bucket, cfg.s3_prefix, cfg.s3_endpoint_url)
    store = LocalBlobStore(cfg.blob_dir)
    store.open()
    return store


async def close_pool(pool: asyncpg.Pool, timeout_s: float = 10.0) -> None:
    """Waits for connections in use to come back, then cuts the rest."""
    try:
        await asyncio.wait_for(pool.close(), timeout_s)
    except TimeoutError:
        log.warning("PostgreSQL connections still busy after %.0fs; closing them", timeout_s)
        pool.terminate()


class Consumers:
    """The frames and detections consumer loops, started after the server serves."""

    def __init__(self, loops: list[ConsumerLoop[Any]]) -> None:
        self.loops = loops

    def start(self) -> None:
        for loop in self.loops:
            loop.start()

    async def stop(self) -> None:
        await asyncio.gather(*(loop.stop() for loop in self.loops))


def build_consumers(
    cfg: Settings,
    *,
    blobs: BlobStore,
    offline: OfflineStore,
    online: OnlineStore,
    executor: ThreadPoolExecutor,
    metrics: FeatureMetrics,
    repair: OnlineRepair | None = None,
) -> Consumers:
    backoff = Backoff(cfg.retry_initial_s, cfg.retry_max_s)
    heartbeat_ms = max(100, cfg.kafka_session_timeout_ms // 3)

    def consumer_for(topic: str, group: str) -> AIOKafkaConsumer:
        return create_consumer(
            cfg.kafka_bootstrap,
            topic,
            group_id=group,
            client_id=f"feature-service-{group}",
            session_timeout_ms=cfg.kafka_session_timeout_ms,
            heartbeat_interval_ms=heartbeat_ms,
            max_poll_interval_ms=cfg.kafka_max_poll_interval_ms,
        )

    def dlq_producer() -> AIOKafkaProducer:
        return create_producer(cfg.kafka_bootstrap, client_id="feature-service-dlq", idempotence=cfg.kafka_idempotence)

    async def topics() -> None:
        if cfg.create_topics:
            await ensure_topics(cfg.kafka_bootstrap)

    loops: list[ConsumerLoop[Any]] = []
    if cfg.consume_frames:
        frames = FrameHandler(
            limits=Limits(cfg.max_image_bytes, cfg.max_image_pixels),
            blobs=blobs,
            offline=offline,
            online=online,
            make_producer=dlq_producer,
            executor=executor,
            metrics=metrics,
            repair=repair,
        )
        loops.append(
            ConsumerLoop(
                name="frames",
                make_consumer=lambda: consumer_for(FRAMES_TOPIC, cfg.frames_group),
                handler=frames,
                batch_size=cfg.frames_batch_size,
                poll_timeout_ms=cfg.poll_timeout_ms,
                backoff=backoff,
                metrics=metrics,
                before_start=topics,
                max_store_attempts=cfg.max_store_attempts,
            )
        )
    if cfg.consume_detections:
        detections = DetectionHandler(
            offline=offline,
            online=online,
            car_classes=cfg.car_classes,
            metrics=metrics,
            make_producer=dlq_producer,
            repair=repair,
        )
        loops.append(
            ConsumerLoop(
                name="detections",
                make_consumer=lambda: consumer_for(DETECTIONS_TOPIC, cfg.detections_group),
                handler=detections,
                batch_size=cfg.detections_batch_size,
                poll_timeout_ms=cfg.poll_timeout_ms,
                backoff=backoff,
                metrics=metrics,
                before_start=topics,
                max_store_attempts=cfg.max_store_attempts,
            )
        )
    return Consumers(loops)


async def build(cfg: Settings, ctx: Context) -> FeatureDaemon:
    metrics = FeatureMetrics(ctx.metrics)
    executor = ThreadPoolExecutor(cfg.decode_threads, thread_name_prefix="feature-work")
    ctx.on_close(lambda: executor.shutdown(wait=True, cancel_futures=True))
    blobs = await asyncio.to_thread(open_blob_store, cfg)
    ctx.on_close(blobs.close)

    postgres_password = await asyncio.to_thread(read_password, cfg.postgres_password_file)
    pool = await db.create_pool(
        cfg.postgres_dsn, cfg.postgres_pool_size, cfg.postgres_start_timeout_s, password=postgres_password
    )
    ctx.on_close(lambda: close_pool(pool))
    async with pool.acquire() as conn:
        applied = await db.migrate(conn, db.load_migrations())
    log.info("PostgreSQL at %s ready (migrations applied now: %s)", db.redact(cfg.postgres_dsn), applied or "none")

    redis_password = await asyncio.to_thread(read_password, cfg.redis_password_file)
    online = OnlineStore.from_url(cfg.redis_url, cfg.features_ttl_s, password=redis_password)
    ctx.on_close(online.close)
    offline = OfflineStore(pool)
    datasets = Datasets(pool, blobs, executor, cfg.stream_page_frames)

    server = ctx.grpc_server([SERVICE_NAME], callers=CALLERS)
    feature_pb2_grpc.add_FeatureServiceServicer_to_server(FeatureServicer(online, datasets), server.server)
    repair = OnlineRepair(
        online=online,
        pool=pool,
        metrics=metrics,
        car_classes=cfg.car_classes,
        backoff=Backoff(cfg.retry_initial_s, cfg.retry_max_s),
    )
    ctx.on_close(repair.close)  # before the pool and Redis client it uses (closed in reverse order)
    consumers = build_consumers(
        cfg, blobs=blobs, offline=offline, online=online, executor=executor, metrics=metrics, repair=repair
    )
    # Registered last so it runs first on close, should the drain hook not have run.
    ctx.on_close(consumers.stop)
    log.info(
        "blobs in %s; consuming %s from %s",
        blobs.describe(),
        ", ".join(loop.name for loop in consumers.loops) or "nothing",
        cfg.kafka_bootstrap,
    )
    collector = None
    if isinstance(blobs, LocalBlobStore):
        collector = BlobCollector(
            blobs, pool, min_age_s=cfg.blob_gc_min_age_s, interval_s=cfg.blob_gc_interval_s, metrics=metrics
        )
        ctx.on_close(collector.close)
    return FeatureDaemon(server, consumers, repair, collector)


@dataclass
class FeatureDaemon(Daemon):
    server: Server
    consumers: Consumers
    repair: OnlineRepair
    collector: BlobCollector | None

    async def start(self) -> None:
        await self.server.set_serving(True)
        self.repair.start()
        if self.collector is not None:
            self.collector.start()
        self.consumers.start()

    async def before_drain(self) -> None:
        # Consumers finish and commit their batch before the pools they write to close.
        await self.consumers.stop()


DAEMON = DaemonSpec("feature_service", Settings, "CARMESH_FEATURE_", build)
