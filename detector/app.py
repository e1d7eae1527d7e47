"""Wires the detector: executors, model manager, registry watcher (or a local file), gRPC server."""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from carmesh.v1 import detector_pb2_grpc
from detector.batcher import BatchingOptions
from detector.config import Settings
from detector.detector import DetectDefaults, Detector
from detector.devices import device_providers
from detector.engine import EngineOptions, ModelRef, ModelSpec, choose_providers
from detector.errors import ModelLoadError
from detector.kserve import SERVICE_NAME as KSERVE_SERVICE_NAME
from detector.kserve import KServeServicer, add_kserve_to_server
from detector.metrics import DetectorMetrics, StreamMetrics
from detector.models import LoadedModel, ModelManager
from detector.registry_source import ModelCache, RegistryWatcher, WatchOptions
from detector.server import SERVICE_NAME, DetectorServicer
from detector.stream import FrameStream, StreamOptions
from detector.triton import TritonOptions, backend_factory
from kit import mesh_tls
from kit.daemon import Context, Daemon, DaemonSpec, StartupError
from kit.hashing import sha256_file
from kit.mesh_tls import CallerPolicy

# Only the gateway calls the detector: clients reach it through the gateway's keys and scopes.
CALLERS = CallerPolicy(default=frozenset({mesh_tls.GATEWAY}))

log = logging.getLogger(__name__)


async def build(cfg: Settings, ctx: Context) -> DetectorDaemon:
    metrics = DetectorMetrics(ctx.metrics)
    required_provider = ""
    try:
        if cfg.providers:
            if cfg.device != "auto":
                raise StartupError(f"give --device ({cfg.device}) or --providers, not both")
            providers = choose_providers(cfg.providers)
            log.info("execution providers as configured: %s", ", ".join(providers))
        else:
            choice = device_providers(cfg.device)
            providers, required_provider = list(choice.providers), choice.required
    except ModelLoadError as exc:
        raise StartupError(str(exc)) from exc
    cores = os.cpu_count() or 1
    engine_options = EngineOptions(
        providers=providers,
        intra_op_threads=cfg.intra_op_threads or max(1, cores // cfg.inference_threads),
        warmup_batch_size=cfg.max_batch_size if cfg.warmup else 1,
        solo_intra_op_threads=cores if cfg.solo_batch_all_cores and not cfg.intra_op_threads else 0,
        required_provider=required_provider,
    )
    if cfg.backend == "triton":
        engine_options = triton_engine_options(cfg, engine_options)
    preprocess_executor = ThreadPoolExecutor(cfg.preprocess_threads, thread_name_prefix="detector-pre")
    ctx.on_close(lambda: preprocess_executor.shutdown(wait=False, cancel_futures=True))
    inference_executor = ThreadPoolExecutor(cfg.inference_threads, thread_name_prefix="detector-infer")
    ctx.on_close(lambda: inference_executor.shutdown(wait=False, cancel_futures=True))
    server = ctx.grpc_server([SERVICE_NAME, KSERVE_SERVICE_NAME], callers=CALLERS)

    async def serve_once_loaded(model: LoadedModel) -> None:
        await server.set_serving(True)

    manager = ModelManager(
        engine_options=engine_options,
        batching=BatchingOptions(cfg.max_batch_size, cfg.max_wait_ms, cfg.max_queue, cfg.inference_threads),
        inference_executor=inference_executor,
        metrics=metrics,
        drain_timeout_s=cfg.drain_timeout_s,
        on_loaded=serve_once_loaded,
    )
    ctx.on_close(manager.close)
    watcher: RegistryWatcher | None = None
    if cfg.model_path is None:
        watcher = RegistryWatcher(
            WatchOptions(
                addr=cfg.registry_addr,
                name=cfg.model_name,
                alias=cfg.model_alias,
                retry_initial_s=cfg.registry_retry_initial_s,
                retry_max_s=cfg.registry_retry_max_s,
                chunk_bytes=cfg.download_chunk_bytes,
                max_message_bytes=cfg.max_message_bytes,
                default_input_hw=(cfg.input_height, cfg.input_width),
                tls=ctx.mesh_tls,
            ),
            ModelCache(cfg.model_cache_dir.expanduser(), cfg.model_cache_max_bytes, metrics.on_cache_trim),
            manager,
        )
        ctx.on_close(watcher.close)
    detector = Detector(
        manager,
        preprocess_executor,
        DetectDefaults(
            cfg.score_threshold, cfg.iou_threshold, tuple(cfg.classes), cfg.max_detections, cfg.max_image_pixels
        ),
        waiting_for=watcher.waiting_for if watcher is not None else lambda: f"{cfg.model_source} is still loading",
    )
    detector_pb2_grpc.add_DetectorServiceServicer_to_server(
        DetectorServicer(detector, manager, cfg.stream_window), server.server
    )
    # KServe v2 (tritonclient, KServe tooling) over the same model, batcher and post-processing.
    add_kserve_to_server(KServeServicer(detector, manager), server.server)
    stream: FrameStream | None = None
    if cfg.stream_consumer:
        frames = FrameStream(
            detector,
            manager,
            StreamOptions(
                bootstrap=cfg.kafka_bootstrap,
                group_id=cfg.stream_group_id,
                idempotence=cfg.kafka_idempotence,
                max_inflight=cfg.stream_inflight_frames,
                retry_max_s=cfg.stream_retry_max_s,
                session_timeout_ms=cfg.stream_session_timeout_ms,
                max_poll_interval_ms=cfg.stream_max_poll_interval_ms,
                frames_topic=cfg.frames_topic,
                detections_topic=cfg.detections_topic,
            ),
            StreamMetrics(ctx.metrics),
        )
        # Before the model goes away, should the drain hook not have run.
        ctx.on_close(lambda: frames.stop(cfg.shutdown_grace_s))
        stream = frames
    return DetectorDaemon(cfg, manager, watcher, stream, inference_executor)


def triton_engine_options(cfg: Settings, local: EngineOptions) -> EngineOptions:
    """Batches go to Triton; the local session (one thread, CPU) only reads the file's tensors and names."""
    triton = TritonOptions(
        url=cfg.triton_url,
        model=cfg.triton_model,
        model_control=cfg.triton_model_control,
        shared_memory=cfg.triton_shared_memory,
        max_batch_size=cfg.max_batch_size,
        timeout_s=cfg.triton_timeout_s,
        ready_timeout_s=cfg.triton_ready_timeout_s,
    )
    return replace(
        local,
        providers=["CPUExecutionProvider"],
        intra_op_threads=1,
        solo_intra_op_threads=0,
        required_provider="",  # the device is Triton's
        backend=backend_factory(triton),
    )


@dataclass
class DetectorDaemon(Daemon):
    """Serves at once, NOT_SERVING until a model is loaded (the manager's on_loaded says SERVING)."""

    cfg: Settings
    manager: ModelManager
    watcher: RegistryWatcher | None
    stream: FrameStream | None
    inference_executor: ThreadPoolExecutor  # for tests that hold its threads

    async def start(self) -> None:
        log.info("model: %s", self.cfg.model_source)
        if self.watcher is not None:
            self.watcher.start()
        else:
            await self._load_file()
        # Pauses by itself while no model is loaded, so it can start before the registry answers.
        if self.stream is not None:
            self.stream.start()

    async def before_drain(self) -> None:
        """Stops taking frames, finishes those in flight and commits them (before the model goes away)."""
        if self.stream is not None:
            await self.stream.stop(self.cfg.shutdown_grace_s)

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
        try:
            await self.manager.activate(path, spec)
        except ModelLoadError as exc:
            raise StartupError(f"cannot serve the model: {exc}") from exc


DAEMON = DaemonSpec("detector", Settings, "CARMESH_DETECTOR_", build)
