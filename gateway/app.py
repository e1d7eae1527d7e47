"""Wires the gateway: API keys, rate limiter, upstream pools, handlers, health, metrics."""

from __future__ import annotations

import logging

from grpc_health.v1 import health_pb2

from gateway.auth import Authenticator, load_key_store
from gateway.config import Settings
from gateway.errors import ApiKeysError
from gateway.metrics import GatewayMetrics
from gateway.proxy import DeadlinePolicy
from gateway.ratelimit import RateLimiter
from gateway.server import DETECTOR, FEATURES, INGEST, REGISTRY, TRAINING, Admission, build_handlers
from gateway.upstream import UpstreamPool
from kit.lifecycle import Lifecycle
from kit.metrics import Metrics, MetricsHttpServer
from kit.server import Server

log = logging.getLogger(__name__)


def upstream_addresses(cfg: Settings) -> dict[str, tuple[str, list[str]]]:
    """Routed service -> (label for messages, replica addresses); optional services only when configured."""
    routes = {DETECTOR: ("detector", list(cfg.detector_addrs)), REGISTRY: ("registry", [cfg.registry_addr])}
    for service, label, address in (
        (INGEST, "ingestor", cfg.ingestor_addr),
        (FEATURES, "feature_service", cfg.feature_addr),
        (TRAINING, "trainer", cfg.trainer_addr),
    ):
        if address:
            routes[service] = (label, [address])
    return routes


async def serve(cfg: Settings) -> None:
    try:
        keys = load_key_store(cfg.api_keys_file, [key.get_secret_value() for key in cfg.api_keys])
        if cfg.auth_required and len(keys) == 0:
            raise ApiKeysError(
                "auth_required is on but no API keys are configured: set --api-keys-file or "
                "CARMESH_GATEWAY_API_KEYS (format in gateway/auth.py), or --no-auth-required for local development"
            )
    except ApiKeysError as exc:
        log.error("cannot start: %s", exc)
        raise SystemExit(2) from None

    metrics = Metrics("gateway")
    gateway_metrics = GatewayMetrics(metrics)
    lifecycle = Lifecycle(cfg.shutdown_grace_s)
    if cfg.metrics_port:
        metrics_http = MetricsHttpServer(metrics, cfg.host, cfg.metrics_port)
        lifecycle.on_close(metrics_http.close)

    routes = upstream_addresses(cfg)
    server = Server(
        host=cfg.host,
        port=cfg.grpc_port,
        service_names=list(routes),
        metrics=metrics,
        max_message_bytes=cfg.max_message_bytes,
    )

    async def publish_health(pool: UpstreamPool) -> None:
        # A routed service is SERVING through the gateway only while one of its upstreams is.
        statuses = health_pb2.HealthCheckResponse
        await server.health.set(pool.service, statuses.SERVING if pool.healthy_count else statuses.NOT_SERVING)

    pools = {
        service: UpstreamPool(
            service,
            label,
            addresses,
            max_message_bytes=cfg.max_message_bytes,
            check_interval_s=cfg.health_check_interval_s,
            metrics=gateway_metrics,
            on_change=publish_health,
        )
        for service, (label, addresses) in routes.items()
    }
    for pool in pools.values():
        lifecycle.on_close(pool.close)
        await pool.start()

    admission = Admission(
        Authenticator(keys, cfg.auth_required), RateLimiter(cfg.rate_limit_rps, cfg.rate_limit_burst), gateway_metrics
    )
    deadlines = DeadlinePolicy(cfg.default_deadline_s, cfg.max_deadline_s)
    server.server.add_generic_rpc_handlers(build_handlers(pools, admission, deadlines, gateway_metrics))
    await server.start()
    await server.health.set("", health_pb2.HealthCheckResponse.SERVING)
    for pool in pools.values():
        await publish_health(pool)
    log.info(
        "gateway serving on %s: %s; %d API key(s), auth %s, %g calls/s per key (burst %d)",
        server.address,
        ", ".join(f"{service} -> {','.join(addresses)}" for service, (_, addresses) in routes.items()),
        len(keys),
        "required" if cfg.auth_required else "optional",
        cfg.rate_limit_rps,
        cfg.rate_limit_burst,
    )
    await lifecycle.run(server)
