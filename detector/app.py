"""Wires the detector: executors, model manager, registry watcher (or a local file), gRPC server."""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from carmesh.v1 import detector_pb2_grpc
from detector.batcher import BatchingOptions
from detector.config import Settings
from detector.detector import DetectDefaults, Detector
from detector.engine import EngineOptions, ModelRef, ModelSpec, choose_providers
from detector.errors import ModelLoadError
from detector.metrics import DetectorMetrics, StreamMetrics
from detector.models import LoadedModel, ModelManager
from detector.registry_source import ModelCache, RegistryWatcher, WatchOptions
from detector.server import SERVICE_NAME, DetectorServicer
from detector.stream import FrameStream, StreamOptions
from kit.hashing import sha256_file
from kit.lifecycle import Lifecycle
from kit.metrics import Metrics, MetricsHttpServer
from kit.server import Server

log = logging.getLogger(__name__)


class DetectorApp:
    """Every part of the daemon, built explicitly from settings; :func:`serve` runs it, tests start it in-process."""

    def __init__(self, cfg: Settings, metrics: Metrics) -> None:
        self.cfg = cfg
        self.registry = metrics.registry
        self.metrics = DetectorMetrics(metrics)
        cores = os.cpu_count() or 1
        engine_options = EngineOptions(
            providers=choose_providers(cfg.providers),
            intra_op_threads=cfg.intra_op_threads or max(1, cores // cfg.inference_threads),
            warmup_batch_size=cfg.max_batch_size if cfg.warmup else 1,
            solo_intra_op_threads=cores if cfg.solo_batch_all_cores and not cfg.intra_op_threads else 0,
        )
        self.preprocess_executor = ThreadPoolExecutor(cfg.preprocess_threads, thread_name_prefix="detector-pre")
        self.inference_executor = ThreadPoolExecutor(cfg.inference_threads, thread_name_prefix="detector-infer")
        self.server = Server(
            host=cfg.host,
            port=cfg.grpc_port,
            service_names=[SERVICE_NAME],
            metrics=metrics,
            max_message_bytes=cfg.max_message_bytes,
        )
        self.manager = ModelManager(
            engine_options=engine_options,
            batching=BatchingOptions(cfg.max_batch_size, cfg.max_wait_ms, cfg.max_queue, cfg.inference_threads),
            inference_executor=self.inference_executor,
            metrics=self.metrics,
            drain_timeout_s=cfg.drain_timeout_s,
            on_loaded=self._on_loaded,
        )
        self.watcher: RegistryWatcher | None = None
        if cfg.model_path is None:
            self.watcher = RegistryWatcher(
                WatchOptions(
                    addr=cfg.registry_addr,
                    name=cfg.model_name,
                    alias=cfg.model_alias,
                    retry_initial_s=cfg.registry_retry_initial_s,
                    retry_max_s=cfg.registry_retry_max_s,
                    chunk_bytes=cfg.download_chunk_bytes,
                    max_message_bytes=cfg.max_message_bytes,
                    default_input_hw=(cfg.input_height, cfg.input_width),
                ),
                ModelCache(cfg.model_cache_dir.expanduser()),
                self.manager,
            )
        self.detector = Detector(
            self.manager,
            self.preprocess_executor,
            DetectDefaults(
                cfg.score_threshold, cfg.iou_threshold, tuple(cfg.classes), cfg.max_detections, cfg.max_image_pixels
            ),
            waiting_for=self._waiting_for,
        )
        detector_pb2_grpc.add_DetectorServiceServicer_to_server(
            DetectorServicer(self.detector, self.manager, cfg.stream_window), self.server.server
        )
        self.stream: FrameStream | None = None
        if cfg.stream_consumer:
            self.stream = FrameStream(
                self.detector,
                self.manager,
                StreamOptions(
                    bootstrap=cfg.kafka_bootstrap,
                    group_id=cfg.stream_group_id,
                    idempotence=cfg.kafka_idempotence,
                    max_inflight=cfg.stream_inflight_frames,
                    retry_max_s=cfg.stream_retry_max_s,
                ),
                StreamMetrics(metrics),
            )

    def _waiting_for(self) -> str:
        if self.watcher is not None:
            return self.watcher.waiting_for()
        return f"{self.cfg.model_source} is still loading"

    async def _on_loaded(self, model: LoadedModel) -> None:
        await self.server.set_serving(True)

    async def _load_file(self) -> None:
        path = self.cfg.model_path
        assert path is not None
        sha256 = await asyncio.to_thread(sha256_file, path)
        spec = ModelSpec(
            ref=ModelRef(name=path.stem, version=sha256[:12]),
            family=self.cfg.model_family,
            class_names=tuple(self.cfg.class_names),
            input_hw=(self.cfg.input_height, self.cfg.input_width),
            sha256=sha256,
        )
        await self.manager.activate(path, spec)

    async def start(self) -> None:
        """Serves at once, NOT_SERVING until a model is loaded; raises :class:`ModelLoadError` for a bad model_path."""
        await self.server.start()
        await self.server.set_serving(False)
        log.info("detector on %s, model: %s", self.server.address, self.cfg.model_source)
        if self.watcher is not None:
            self.watcher.start()
        else:
            await self._load_file()
        # Pauses by itself while no model is loaded, so it can start before the registry answers.
        if self.stream is not None:
            self.stream.start()

    async def stop_stream(self) -> None:
        """Stops taking frames, finishes those in flight and commits them (before the model goes away)."""
        if self.stream is not None:
            await self.stream.stop(self.cfg.shutdown_grace_s)

    async def close(self) -> None:
        await self.stop_stream()
        if self.watcher is not None:
            await self.watcher.close()
        await self.manager.close()
        self.preprocess_executor.shutdown(wait=False, cancel_futures=True)
        self.inference_executor.shutdown(wait=False, cancel_futures=True)


async def serve(cfg: Settings) -> None:
    lifecycle = Lifecycle(cfg.shutdown_grace_s)
    metrics = Metrics("detector")
    if cfg.metrics_port:
        http = MetricsHttpServer(metrics, cfg.host, cfg.metrics_port)
        lifecycle.on_close(http.close)
    app: DetectorApp | None = None
    try:
        app = DetectorApp(cfg, metrics)
        lifecycle.on_close(app.close)
        await app.start()
    except ModelLoadError as exc:
        log.error("cannot serve: %s", exc)
        if app is not None:
            await app.server.stop(0)
        await lifecycle.stack.aclose()
        raise SystemExit(2) from exc
    await lifecycle.run(app.server, before_drain=app.stop_stream)
