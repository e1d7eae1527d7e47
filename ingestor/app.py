"""Wires the ingestor: Kafka publisher, sources, data set importer, client ingest, gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

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
from kit.lifecycle import Lifecycle
from kit.metrics import Metrics, MetricsHttpServer
from kit.server import Server

log = logging.getLogger(__name__)

# OpenCV reads its FFmpeg options from this variable when a capture opens.
FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"


class IngestorApp:
    """Every part of the daemon, built explicitly from settings."""

    def __init__(self, cfg: Settings, metrics: Metrics) -> None:
        self.cfg = cfg
        self.metrics = IngestorMetrics(metrics)
        self.publisher = Publisher(
            PublisherOptions(
                bootstrap=cfg.kafka_bootstrap,
                topic=cfg.frames_topic,
                partitions=cfg.frames_partitions,
                idempotence=cfg.kafka_idempotence,
                max_in_flight=cfg.max_in_flight,
                retry_initial_s=cfg.retry_initial_ms / 1000,
                retry_max_s=cfg.retry_max_ms / 1000,
            ),
            self.metrics,
        )
        paths = PathPolicy(cfg.allowed_roots)
        self.sources = SourceManager(
            self.publisher,
            paths,
            SourceOptions(
                max_sources=cfg.max_sources,
                max_image_bytes=cfg.max_image_bytes,
                jpeg_quality=cfg.jpeg_quality,
                stream=StreamOptions(
                    open_timeout_ms=cfg.stream_open_timeout_ms,
                    read_timeout_ms=cfg.stream_read_timeout_ms,
                    reconnect_max_s=cfg.stream_reconnect_max_s,
                ),
            ),
            self.metrics,
        )
        importer = DatasetImporter(
            self.publisher,
            paths,
            ImportLimits(
                max_image_bytes=cfg.max_image_bytes,
                publish_wait_s=cfg.publish_wait_ms / 1000,
                ack_wait_s=cfg.ack_wait_ms / 1000,
                progress_interval_s=cfg.progress_interval_ms / 1000,
            ),
            self.metrics,
        )
        clients = ClientIngest(
            self.publisher,
            ClientLimits(cfg.max_image_bytes, cfg.publish_wait_ms / 1000, cfg.ack_wait_ms / 1000),
            self.metrics,
        )
        self.server = Server(
            host=cfg.host,
            port=cfg.grpc_port,
            service_names=[SERVICE_NAME],
            metrics=metrics,
            max_message_bytes=cfg.max_message_bytes,
        )
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(
            IngestServicer(self.sources, importer, clients), self.server.server
        )
        self._serving_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serves at once; SERVING once the broker answered (requests before that are buffered)."""
        self.publisher.start()
        await self.server.start()
        await self.server.set_serving(False)
        self._serving_task = asyncio.create_task(self._serve_when_connected())
        log.info(
            "ingestor on %s, publishing to %s at %s",
            self.server.address,
            self.cfg.frames_topic,
            self.cfg.kafka_bootstrap,
        )

    async def _serve_when_connected(self) -> None:
        await self.publisher.wait_connected()
        await self.server.set_serving(True)

    async def stop_intake(self) -> None:
        """First step of SIGTERM: NOT_SERVING, then the sources stop reading."""
        if self._serving_task is not None:
            self._serving_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._serving_task
        await self.server.set_serving(False)
        await self.sources.close()

    async def close(self) -> None:
        await self.sources.close()
        # Frames accepted before shutdown get the grace period to reach the broker.
        await self.publisher.close(self.cfg.shutdown_grace_s)


async def serve(cfg: Settings) -> None:
    # Set before any capture opens; an operator's own value in the environment wins.
    os.environ.setdefault(FFMPEG_OPTIONS_ENV, cfg.ffmpeg_capture_options)
    lifecycle = Lifecycle(cfg.shutdown_grace_s)
    metrics = Metrics("ingestor")
    if cfg.metrics_port:
        http = MetricsHttpServer(metrics, cfg.host, cfg.metrics_port)
        lifecycle.on_close(http.close)
    app = IngestorApp(cfg, metrics)
    lifecycle.on_close(app.close)
    await app.start()
    await lifecycle.run(app.server, before_drain=app.stop_intake)
