"""Wires the registry gateway: MLflow store, artifact cache, alias watcher, gRPC server."""

from __future__ import annotations

import asyncio
import logging
import os

from prometheus_client import Gauge

from carmesh.v1 import registry_pb2, registry_pb2_grpc
from kit.errors import DomainError
from kit.lifecycle import Lifecycle
from kit.metrics import Metrics, MetricsHttpServer
from kit.server import Server
from registry_gateway.cache import ArtifactCache
from registry_gateway.config import Settings
from registry_gateway.mlflow_store import MlflowStore
from registry_gateway.registry import Registry
from registry_gateway.server import RegistryServicer
from registry_gateway.watch import AliasWatcher

log = logging.getLogger("registry_gateway")

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name


def configure_mlflow_client(cfg: Settings) -> None:
    """MLflow reads its HTTP retry policy from the environment only; its defaults retry for
    minutes, which would hold every RPC when MLflow is down instead of answering UNAVAILABLE.
    Its log lines go through our JSON handler, and it must not print run URLs to stdout."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(cfg.mlflow_max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = str(cfg.mlflow_backoff_factor)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(cfg.mlflow_request_timeout_s)
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    mlflow_log = logging.getLogger("mlflow")
    mlflow_log.handlers.clear()
    mlflow_log.propagate = True
    mlflow_log.setLevel(logging.WARNING)


async def _report_mlflow(store: MlflowStore) -> None:
    try:
        await store.ping()
    except DomainError as exc:
        log.warning("MLflow is not answering yet; RPCs that need it fail with UNAVAILABLE until it does: %s", exc)
    else:
        log.info("MLflow at %s answers", store.tracking_uri)


async def serve(cfg: Settings) -> None:
    configure_mlflow_client(cfg)
    lifecycle = Lifecycle(cfg.shutdown_grace_s)
    try:
        server, watcher = await _wire(cfg, lifecycle)
    except BaseException:
        # Whatever was opened before the failure (metrics thread, poller) is closed again.
        await lifecycle.stack.aclose()
        raise
    # Watch streams end first, so the drain does not wait out the grace period on them.
    await lifecycle.run(server, before_drain=watcher.close)


async def _wire(cfg: Settings, lifecycle: Lifecycle) -> tuple[Server, AliasWatcher]:
    metrics = Metrics("registry_gateway")
    if cfg.metrics_port:
        metrics_http = MetricsHttpServer(metrics, cfg.host, cfg.metrics_port)
        lifecycle.on_close(metrics_http.close)

    store = MlflowStore(cfg.mlflow_tracking_uri, cfg.imports_experiment)
    cache = ArtifactCache(cfg.cache_dir, store)
    await asyncio.to_thread(cache.open)
    lifecycle.on_close(cache.close)
    registry = Registry(
        store, cache, max_import_bytes=cfg.max_import_bytes, triton_max_batch_size=cfg.triton_max_batch_size
    )
    watcher = AliasWatcher(store.alias_target, store.get_version, cfg.poll_interval_s)
    watcher.start()
    lifecycle.on_close(watcher.close)
    Gauge(
        "carmesh_registry_watched_aliases",
        "(model, alias) keys the shared poller watches",
        registry=metrics.registry,
    ).set_function(lambda: len(watcher.watched_keys))

    server = Server(
        host=cfg.host,
        port=cfg.grpc_port,
        service_names=[SERVICE_NAME],
        metrics=metrics,
        max_message_bytes=cfg.max_message_bytes,
    )
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(
        RegistryServicer(registry, watcher, cfg.download_chunk_bytes, cfg.max_message_bytes), server.server
    )
    await server.start()
    # Serving does not wait for MLflow: each RPC answers UNAVAILABLE while MLflow is down.
    check = asyncio.create_task(_report_mlflow(store))
    lifecycle.on_close(check.cancel)
    await server.set_serving(True)
    log.info("serving on %s (MLflow %s, cache %s)", server.address, cfg.mlflow_tracking_uri, cfg.cache_dir)
    return server, watcher
