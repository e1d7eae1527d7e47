"""Wires the ingestor: Kafka publisher, sources, data set importer, client ingest, gRPC server."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from carmesh.v1 import ingest_pb2_grpc
from ingestor.capture import StreamOptions
from ingestor.clients import ClientIngest, ClientLimits
from ingestor.config import Settings
from ingestor.importer import DatasetImporter, ImportLimits
from ingestor.metrics import IngestorMetrics
from ingestor.paths import PathPolicy
from ingestor.publisher import Publisher, PublisherOptions
from ingestor.server import SERVICE_NAME, IngestServicer
from ingestor.sources import SourceManager, SourceOptions
from ingestor.state import StateStore
from ingestor.streams import StreamPolicy
from kit import mesh_tls
from kit.daemon import Context, Daemon, DaemonSpec, StartupError
from kit.mesh_tls import CallerPolicy
from kit.server import Server

# Only the gateway calls the ingestor: clients reach it through the gateway's keys and scopes.
CALLERS = CallerPolicy(default=frozenset({mesh_tls.GATEWAY}))

log = logging.getLogger(__name__)

# OpenCV reads its FFmpeg options from this variable when a capture opens.
FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"


async def build(cfg: Settings, ctx: Context) -> IngestorDaemon:
    # Set before any capture opens; an operator's own value in the environment wins.
    os.environ.setdefault(FFMPEG_OPTIONS_ENV, cfg.ffmpeg_capture_options)
    metrics = IngestorMetrics(ctx.metrics)
    publisher = Publisher(
        PublisherOptions(
            bootstrap=cfg.kafka_bootstrap,
            topic=cfg.frames_topic,
            partitions=cfg.frames_partitions,
            idempotence=cfg.kafka_idempotence,
            max_in_flight=cfg.max_in_flight,
            retry_initial_s=cfg.retry_initial_ms / 1000,
            retry_max_s=cfg.retry_max_ms / 1000,
        ),
        metrics,
    )
    # Closes run last-registered-first: this one runs after the publisher's flush below, so the
    # state file holds the positions of the frames that flush delivered (no replay after a clean stop).
    ctx.on_close(lambda: sources.save())
    # Frames accepted before shutdown get the grace period to reach the broker.
    ctx.on_close(lambda: publisher.close(cfg.shutdown_grace_s))
    paths = PathPolicy(cfg.allowed_roots)
    if cfg.state_dir is not None:
        # Checked now: a source state that cannot be saved would only show after the next crash.
        try:
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"--state-dir {cfg.state_dir}: {exc}") from None
        if not os.access(cfg.state_dir, os.W_OK | os.X_OK):
            raise StartupError(f"--state-dir {cfg.state_dir} is not writable")
    sources = SourceManager(
        publisher,
        paths,
        SourceOptions(
            max_sources=cfg.max_sources,
            max_image_bytes=cfg.max_image_bytes,
            max_image_pixels=cfg.max_image_pixels,
            jpeg_quality=cfg.jpeg_quality,
            stream=StreamOptions(
                open_timeout_ms=cfg.stream_open_timeout_ms,
                read_timeout_ms=cfg.stream_read_timeout_ms,
                reconnect_max_s=cfg.stream_reconnect_max_s,
            ),
            stream_policy=StreamPolicy(cfg.stream_allowed_hosts, cfg.stream_denied_networks),
            state_flush_interval_s=cfg.state_flush_interval_ms / 1000,
        ),
        metrics,
        StateStore(cfg.state_dir) if cfg.state_dir is not None else None,
    )
    ctx.on_close(sources.close)
    importer = DatasetImporter(
        publisher,
        paths,
        ImportLimits(
            max_image_bytes=cfg.max_image_bytes,
            publish_wait_s=cfg.publish_wait_ms / 1000,
            ack_wait_s=cfg.ack_wait_ms / 1000,
            progress_interval_s=cfg.progress_interval_ms / 1000,
            max_image_pixels=cfg.max_image_pixels,
        ),
        metrics,
    )
    clients = ClientIngest(
        publisher,
        ClientLimits(cfg.max_image_bytes, cfg.publish_wait_ms / 1000, cfg.ack_wait_ms / 1000, cfg.max_image_pixels),
        metrics,
    )
    server = ctx.grpc_server([SERVICE_NAME], callers=CALLERS)
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(IngestServicer(sources, importer, clients), server.server)
    log.info("publishing to %s at %s", cfg.frames_topic, cfg.kafka_bootstrap)
    return IngestorDaemon(ctx, server, publisher, sources)


@dataclass
class IngestorDaemon(Daemon):
    """Serves at once; SERVING once the broker answered (requests before that are buffered)."""

    ctx: Context
    server: Server
    publisher: Publisher
    sources: SourceManager

    async def start(self) -> None:
        self.publisher.start()
        self.ctx.background(self._serve_when_connected(), name="ingestor-serving")
        self.ctx.background(self._resume_sources(), name="ingestor-sources-state")

    async def before_drain(self) -> None:
        # The sources stop reading; frames they handed over are flushed when the publisher closes.
        await self.sources.close()

    async def _resume_sources(self) -> None:
        # In the background: reopening streams takes up to their open timeout each.
        await self.sources.restore()
        await self.sources.persist_forever()

    async def _serve_when_connected(self) -> None:
        await self.publisher.wait_connected()
        await self.server.set_serving(True)


DAEMON = DaemonSpec("ingestor", Settings, "CARMESH_INGESTOR_", build)
