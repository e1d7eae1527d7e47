"""The gateway's own metrics, on the daemon's kit registry next to the per-RPC ones."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from kit.metrics import Metrics


class GatewayMetrics:
    def __init__(self, metrics: Metrics) -> None:
        self.upstream_calls = Counter(
            "carmesh_gateway_upstream_calls_total",
            "Calls forwarded to an upstream, by service, upstream address and the upstream's status code",
            ["service", "upstream", "code"],
            registry=metrics.registry,
        )
        self.upstream_healthy = Gauge(
            "carmesh_gateway_upstream_healthy",
            "1 while the upstream reports SERVING for the service, else 0",
            ["service", "upstream"],
            registry=metrics.registry,
        )
        self.rejected = Counter(
            "carmesh_gateway_rejected_total",
            "Calls refused before forwarding, by reason",
            ["reason"],
            registry=metrics.registry,
        )
        self.calls_by_key = Counter(
            "carmesh_gateway_calls_by_key_total",
            "Calls admitted, by API key name and service",
            ["key", "service"],
            registry=metrics.registry,
        )
