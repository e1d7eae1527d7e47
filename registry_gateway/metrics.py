"""The registry gateway's own metrics, on the daemon's kit registry next to the per-RPC ones."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from kit.lru_files import Trim
from kit.metrics import Metrics

# From a cached metadata read to a model upload of a few hundred MB.
_MLFLOW_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class RegistryMetrics:
    def __init__(self, metrics: Metrics) -> None:
        registry = metrics.registry
        self.mlflow_calls = Counter(
            "carmesh_registry_mlflow_calls_total",
            "Calls to MLflow, by operation and outcome (ok, or the status code its error maps to)",
            ["operation", "outcome"],
            registry=registry,
        )
        self.mlflow_seconds = Histogram(
            "carmesh_registry_mlflow_seconds",
            "Time one MLflow operation took (retries included), by operation",
            ["operation"],
            buckets=_MLFLOW_BUCKETS_S,
            registry=registry,
        )
        self.download_bytes = Counter(
            "carmesh_registry_download_bytes_total",
            "Model file bytes streamed to DownloadModel callers, by model",
            ["model"],
            registry=registry,
        )
        self.imported_versions = Counter(
            "carmesh_registry_imported_versions_total",
            "Model versions registered through ImportModel, by model",
            ["model"],
            registry=registry,
        )
        self.alias_changes = Counter(
            "carmesh_registry_alias_changes_total",
            "Aliases moved through this gateway, by model, alias and action (set, delete, rollback)",
            ["model", "alias", "action"],
            registry=registry,
        )
        self._watched_aliases = Gauge(
            "carmesh_registry_watched_aliases",
            "(model, alias) keys the shared poller watches",
            registry=registry,
        )

        self.watch_polls = Counter(
            "carmesh_registry_watch_polls_total",
            "Rounds of the shared alias poller (each reads every watched model from MLflow once)",
            registry=registry,
        )
        self._watch_streams = Gauge(
            "carmesh_registry_watch_streams",
            "Open WatchAlias streams",
            registry=registry,
        )

        self.cache_bytes = Gauge(
            "carmesh_registry_cache_bytes", "Bytes of ONNX files in the artifact cache", registry=registry
        )
        self.cache_evictions = Counter(
            "carmesh_registry_cache_evictions_total",
            "ONNX files removed from the artifact cache to keep it under its bound",
            registry=registry,
        )
        self.cache_evicted_bytes = Counter(
            "carmesh_registry_cache_evicted_bytes_total",
            "Bytes removed from the artifact cache to keep it under its bound",
            registry=registry,
        )

    def on_cache_trim(self, trim: Trim) -> None:
        self.cache_bytes.set(trim.kept_bytes)
        self.cache_evictions.inc(len(trim.removed))
        self.cache_evicted_bytes.inc(trim.removed_bytes)

    def observe_mlflow(self, operation: str, outcome: str, seconds: float) -> None:
        self.mlflow_calls.labels(operation, outcome).inc()
        self.mlflow_seconds.labels(operation).observe(seconds)

    def watch_count(self, count: Callable[[], int], streams: Callable[[], int]) -> None:
        """Reads the number of watched aliases and open watch streams at each scrape."""
        self._watched_aliases.set_function(lambda: float(count()))
        self._watch_streams.set_function(lambda: float(streams()))
