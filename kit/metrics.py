"""Prometheus metrics on a per-daemon registry, served over HTTP on the daemon's metrics port."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

# Latency buckets in seconds, from sub-millisecond health checks to slow model downloads.
_RPC_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Metrics:
    """One registry per daemon (no process-global collectors), with the RPC metrics every daemon has."""

    service: str
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        self.rpc_total = Counter(
            "carmesh_rpc_total",
            "RPCs handled, by method and status code",
            ["service", "method", "code"],
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "carmesh_rpc_seconds",
            "RPC handling time in seconds, by method",
            ["service", "method"],
            registry=self.registry,
            buckets=_RPC_BUCKETS_S,
        )

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        self.rpc_total.labels(self.service, method, code).inc()
        self.rpc_seconds.labels(self.service, method).observe(seconds)


class MetricsHttpServer:
    """The /metrics endpoint; closed by :meth:`close` so no thread outlives the daemon."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(port, addr=host, registry=metrics.registry)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
