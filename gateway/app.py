"""Wires the gateway: API keys, rate limiter, upstream pools, handlers, health, metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2

from gateway.auth import Authenticator, load_key_store
from gateway.config import Settings
from gateway.errors import ApiKeysError
from gateway.limits import AuthBackoff, Concurrency, MessagePacer
from gateway.metrics import GatewayMetrics
from gateway.proxy import DeadlinePolicy
from gateway.ratelimit import RateLimiter
from gateway.server import (
    DETECTOR,
    FEATURES,
    INFERENCE,
    INGEST,
    REGISTRY,
    TRACKING,
    TRAINING,
    Admission,
    build_handlers,
)
from gateway.upstream import UpstreamPool
from kit.daemon import Context, Daemon, DaemonSpec, StartupError
from kit.grpc_compat import keep_server_status_on_failed_writes
from kit.server import Server

log = logging.getLogger(__name__)


def upstream_addresses(cfg: Settings) -> dict[str, tuple[str, list[str]]]:
    """Routed service -> (label for messages, replica addresses); optional services only when configured."""
    routes = {DETECTOR: ("detector", list(cfg.detector_addrs)), REGISTRY: ("registry", [cfg.registry_addr])}
    # The detectors' KServe v2 endpoint: its own pool, so its health is the detectors' for that service.
    routes[INFERENCE] = ("detector", list(cfg.detector_addrs))
    for service, label, address in (
        (INGEST, "ingestor", cfg.ingestor_addr),
        (FEATURES, "feature_service", cfg.feature_addr),
        (TRAINING, "trainer", cfg.trainer_addr),
        (TRACKING, "tracker", cfg.tracker_addr),
    ):
        if address:
            routes[service] = (label, [address])
    return routes


async def public_credentials(cfg: Settings) -> grpc.ServerCredentials | None:
    """TLS for the public port (no client certificate asked: clients prove themselves by API key)."""
    if cfg.public_plaintext:
        log.warning("the public port serves plaintext (--public-plaintext): API keys cross the network in clear")
        return None
    assert cfg.public_cert_file is not None and cfg.public_key_file is not None  # the settings check
    cert_file, key_file = cfg.public_cert_file, cfg.public_key_file
    try:
        cert, key = await asyncio.to_thread(lambda: (cert_file.read_bytes(), key_file.read_bytes()))
    except OSError as exc:
        raise StartupError(f"cannot read the public TLS files: {exc.strerror} ({exc.filename})") from exc
    return grpc.ssl_server_credentials([(key, cert)])


async def build(cfg: Settings, ctx: Context) -> GatewayDaemon:
    keys = load_key_store(cfg.api_keys_file, [key.get_secret_value() for key in cfg.api_keys])
    if cfg.auth_required and len(keys) == 0:
        raise ApiKeysError(
            "auth_required is on but no API keys are configured: set --api-keys-file or "
            "CARMESH_GATEWAY_API_KEYS (format in gateway/auth.py), or --no-auth-required for local development"
        )
    gateway_metrics = GatewayMetrics(ctx.metrics)
    # Client streams forwarded to a daemon that ends them early keep the daemon's status (grpc/grpc#36066).
    keep_server_status_on_failed_writes()
    routes = upstream_addresses(cfg)
    server = ctx.grpc_server(list(routes), callers=None, public_credentials=await public_credentials(cfg))

    async def publish_health(pool: UpstreamPool) -> None:
        # A routed service is SERVING through the gateway only while one of its upstreams is.
        statuses = health_pb2.HealthCheckResponse
        await server.health.set(pool.service, statuses.SERVING if pool.healthy_count else statuses.NOT_SERVING)

    pools = [
        UpstreamPool(
            service,
            label,
            addresses,
            max_message_bytes=cfg.max_message_bytes,
            check_interval_s=cfg.health_check_interval_s,
            metrics=gateway_metrics,
            tls=ctx.mesh_tls,
            on_change=publish_health,
        )
        for service, (label, addresses) in routes.items()
    ]
    for pool in pools:
        ctx.on_close(pool.close)
        await pool.start()

    admission = Admission(
        Authenticator(keys, cfg.auth_required),
        RateLimiter(cfg.rate_limit_rps, cfg.rate_limit_burst),
        gateway_metrics,
        Concurrency(cfg.max_concurrent_calls_per_key, cfg.max_streams_per_key),
        AuthBackoff(
            cfg.auth_failures_before_backoff, cfg.auth_failure_window_s, cfg.auth_backoff_s, cfg.auth_backoff_max_s
        ),
        MessagePacer(cfg.stream_messages_per_s, cfg.stream_messages_burst),
    )
    deadlines = DeadlinePolicy(cfg.default_deadline_s, cfg.max_deadline_s, cfg.max_stream_lifetime_s)
    server.server.add_generic_rpc_handlers(
        build_handlers({pool.service: pool for pool in pools}, admission, deadlines, gateway_metrics)
    )
    log.info(
        "gateway routes %s; %d API key(s), auth %s, %g calls/s per key (burst %d)",
        ", ".join(f"{service} -> {','.join(addresses)}" for service, (_, addresses) in routes.items()),
        len(keys),
        "required" if cfg.auth_required else "optional",
        cfg.rate_limit_rps,
        cfg.rate_limit_burst,
    )
    return GatewayDaemon(server, pools, publish_health)


@dataclass
class GatewayDaemon(Daemon):
    server: Server
    pools: list[UpstreamPool]
    publish_health: Callable[[UpstreamPool], Awaitable[None]]

    async def start(self) -> None:
        # The gateway itself serves at once; each routed service follows its upstreams.
        await self.server.health.set("", health_pb2.HealthCheckResponse.SERVING)
        for pool in self.pools:
            await self.publish_health(pool)


DAEMON = DaemonSpec("gateway", Settings, "CARMESH_GATEWAY_", build)
