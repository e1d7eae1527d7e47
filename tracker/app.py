"""Wires the tracker: PostgreSQL (schema created at start), the detections consumer, and the
gRPC server (TrackingService, health, reflection). SIGTERM: NOT_SERVING, the batch in progress commits, the
consumer leaves its group (its cameras move to the other replicas), the pool closes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from carmesh.v1 import tracking_pb2_grpc
from kit import mesh_tls
from kit.daemon import Context, Daemon, DaemonSpec
from kit.kafka import DEFAULT_PARTITIONS, create_consumer, create_producer, ensure_topics
from kit.mesh_tls import CallerPolicy
from kit.redact import redact_url
from kit.secret_files import read_password
from kit.server import Server
from tracker.config import Settings
from tracker.consumer import TrackingConsumer
from tracker.events import EventsFollower, Publisher
from tracker.metrics import TrackerMetrics
from tracker.online import OnlineCounts
from tracker.server import SERVICE_NAME, TrackingServicer
from tracker.store import TrackerStore, create_pool
from tracking.core import TrackerConfig

# Only the gateway calls the tracker: clients reach it through the gateway's keys and scopes.
CALLERS = CallerPolicy(default=frozenset({mesh_tls.GATEWAY}))

log = logging.getLogger("tracker")


async def build(cfg: Settings, ctx: Context) -> TrackerDaemon:
    password = await asyncio.to_thread(read_password, cfg.postgres_password_file)
    pool = await create_pool(cfg.postgres_dsn, cfg.postgres_pool_size, cfg.postgres_start_timeout_s, password)
    ctx.on_close(pool.close)
    store = TrackerStore(pool)
    await store.create_schema()
    log.info("PostgreSQL at %s ready", redact_url(cfg.postgres_dsn))
    partitions = DEFAULT_PARTITIONS.get(cfg.detections_topic, 4)
    topics = {cfg.detections_topic: partitions, cfg.events_topic: partitions, cfg.tracks_topic: partitions}
    await ensure_topics(cfg.kafka_bootstrap, topics)
    owner = f"{socket.gethostname()}:{os.getpid()}"
    producer = create_producer(cfg.kafka_bootstrap, client_id=f"tracker-{owner}", idempotence=cfg.kafka_idempotence)
    await producer.start()
    ctx.on_close(producer.stop)
    publisher = Publisher(producer, cfg.events_topic, cfg.tracks_topic)
    online = None
    if cfg.redis_url:
        redis_password = await asyncio.to_thread(read_password, cfg.redis_password_file)
        online = OnlineCounts.from_url(cfg.redis_url, store, cfg.online_ttl_s, password=redis_password)
        ctx.on_close(online.close)

    def make_consumer() -> object:
        return create_consumer(
            cfg.kafka_bootstrap,
            group_id=cfg.group_id,
            client_id=f"tracker-{owner}",
            session_timeout_ms=cfg.kafka_session_timeout_ms,
            heartbeat_interval_ms=max(100, cfg.kafka_session_timeout_ms // 3),
        )

    metrics = TrackerMetrics(ctx.metrics)
    consumer = TrackingConsumer(
        store,
        make_consumer,  # type: ignore[arg-type]
        cfg.detections_topic,
        owner,
        TrackerConfig(lost_track_s=cfg.lost_track_s),
        cfg.batch_size,
        cfg.poll_timeout_ms,
        publish=publisher.publish,
        online=online,
        idle_camera_s=cfg.idle_camera_s,
        metrics=metrics,
    )
    server = ctx.grpc_server([SERVICE_NAME], callers=CALLERS)
    tracking_pb2_grpc.add_TrackingServiceServicer_to_server(
        TrackingServicer(store, EventsFollower(cfg.kafka_bootstrap, cfg.events_topic)), server.server
    )
    retention = CountsRetention(store, cfg.counts_retention_days, cfg.retention_interval_s, metrics)
    return TrackerDaemon(server, consumer, ctx, retention)


@dataclass
class CountsRetention:
    """Deletes per-minute counts older than ``days`` every ``interval_s`` (days 0: never). Every
    replica runs it; the deletes are idempotent and short, so they need no leader."""

    store: TrackerStore
    days: int
    interval_s: float
    metrics: TrackerMetrics

    async def run(self) -> None:
        while self.days > 0:
            cutoff = datetime.now(UTC) - timedelta(days=self.days)
            try:
                deleted = await self.store.delete_counts_before(cutoff)
            except Exception as exc:  # PostgreSQL down: the next round tries again
                log.warning("deleting counts before %s failed (%s: %s)", cutoff.isoformat(), type(exc).__name__, exc)
            else:
                self.metrics.count_rows_deleted.inc(deleted)
                if deleted:
                    log.info("deleted %d count rows of minutes before %s", deleted, cutoff.isoformat())
            await asyncio.sleep(self.interval_s)


@dataclass
class TrackerDaemon(Daemon):
    server: Server
    consumer: TrackingConsumer
    ctx: Context
    retention: CountsRetention
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    async def start(self) -> None:
        self._task = self.ctx.background(self.consumer.run(), "tracker-consumer")
        if self.retention.days > 0:
            self.ctx.background(self.retention.run(), "tracker-counts-retention")
        await self.server.set_serving(True)

    async def before_drain(self) -> None:
        # The batch in progress commits; then the consumer leaves its group.
        await self.consumer.stop_taking_batches()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


DAEMON = DaemonSpec("tracker", Settings, "CARMESH_TRACKER_", build)
