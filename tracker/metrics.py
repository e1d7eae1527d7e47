"""The tracker's own Prometheus metrics, on the daemon's kit registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from kit.metrics import Metrics


class TrackerMetrics:
    def __init__(self, metrics: Metrics) -> None:
        registry = metrics.registry
        self.cameras_in_memory = Gauge(
            "carmesh_tracker_cameras_in_memory", "Cameras whose tracker state is held in memory", registry=registry
        )
        self.cameras_evicted = Counter(
            "carmesh_tracker_cameras_evicted_total",
            "Idle cameras dropped from memory (their checkpoint stays in PostgreSQL)",
            registry=registry,
        )
        self.count_rows_deleted = Counter(
            "carmesh_tracker_count_rows_deleted_total",
            "Per-minute count rows deleted for being older than the retention",
            registry=registry,
        )
