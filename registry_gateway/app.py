"""Wires the registry gateway: MLflow store, artifact cache, alias watcher, gRPC server."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

from carmesh.v1 import registry_pb2, registry_pb2_grpc
from kit import mesh_tls, mlflow_auth
from kit.daemon import Context, Daemon, DaemonSpec
from kit.errors import DomainError
from kit.mesh_tls import CallerPolicy, methods
from kit.server import Server
from registry_gateway.cache import ArtifactCache
from registry_gateway.config import Settings
from registry_gateway.errors import MlflowRefused
from registry_gateway.metrics import RegistryMetrics
from registry_gateway.mlflow_store import MlflowStore
from registry_gateway.registry import Registry
from registry_gateway.server import RegistryServicer
from registry_gateway.watch import AliasWatcher, WatchLimits

log = logging.getLogger("registry_gateway")

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name

# Who may call the registry over the mesh: the gateway (for clients) and the trainer (evaluation,
# publishing) read and write; the detector only reads and watches the alias it serves.
_READS = ("ListModels", "ListModelVersions", "GetModelVersion", "DownloadModel", "WatchAlias")
CALLERS = CallerPolicy(
    default=frozenset({mesh_tls.GATEWAY, mesh_tls.TRAINER}),
    by_method=dict.fromkeys(
        methods(SERVICE_NAME, _READS), frozenset({mesh_tls.GATEWAY, mesh_tls.TRAINER, mesh_tls.DETECTOR})
    ),
)


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
    except MlflowRefused as exc:
        log.error("MLflow refuses the gateway's credentials; RPCs that need it fail with UNAVAILABLE: %s", exc)
    except DomainError as exc:
        log.warning("MLflow is not answering yet; RPCs that need it fail with UNAVAILABLE until it does: %s", exc)
    else:
        log.info("MLflow at %s answers", store.tracking_uri)


async def build(cfg: Settings, ctx: Context) -> RegistryDaemon:
    configure_mlflow_client(cfg)
    # MLflow's client reads basic-auth credentials from this process's environment only; an unreadable
    # or empty password file stops the start (exit 2, naming the file).
    credentials = await asyncio.to_thread(
        mlflow_auth.credentials_env, cfg.mlflow_username, cfg.mlflow_password_file, cfg.mlflow_username_file
    )
    mlflow_auth.apply(credentials)
    user = mlflow_auth.user_of(credentials)
    metrics = RegistryMetrics(ctx.metrics)
    store = MlflowStore(cfg.mlflow_tracking_uri, cfg.imports_experiment, metrics, user)
    cache = ArtifactCache(cfg.cache_dir, store, cfg.cache_max_bytes, metrics.on_cache_trim)
    await asyncio.to_thread(cache.open)
    ctx.on_close(cache.close)
    registry = Registry(
        store, cache, max_import_bytes=cfg.max_import_bytes, triton_max_batch_size=cfg.triton_max_batch_size
    )
    watcher = AliasWatcher(
        store.model_aliases,
        store.get_version,
        cfg.poll_interval_s,
        WatchLimits(max_streams=cfg.watch_max_streams, max_aliases=cfg.watch_max_aliases),
        on_poll=metrics.watch_polls.inc,
    )
    watcher.start()
    ctx.on_close(watcher.close)
    metrics.watch_count(lambda: len(watcher.watched_keys), lambda: watcher.stream_count)
    # Serving does not wait for MLflow: each RPC answers UNAVAILABLE while MLflow is down.
    ctx.background(_report_mlflow(store), name="mlflow-check")

    server = ctx.grpc_server([SERVICE_NAME], callers=CALLERS)
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(
        RegistryServicer(registry, watcher, cfg.download_chunk_bytes, cfg.max_message_bytes, metrics), server.server
    )
    log.info(
        "MLflow %s (%s), cache %s",
        cfg.mlflow_tracking_uri,
        f"user {user}" if user else "no basic auth",
        cfg.cache_dir,
    )
    return RegistryDaemon(server, watcher)


@dataclass
class RegistryDaemon(Daemon):
    server: Server
    watcher: AliasWatcher

    async def start(self) -> None:
        await self.server.set_serving(True)

    async def before_drain(self) -> None:
        # Watch streams end first, so the drain does not wait out the grace period on them.
        await self.watcher.close()


DAEMON = DaemonSpec("registry_gateway", Settings, "CARMESH_REGISTRY_", build)
