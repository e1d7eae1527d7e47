"""The ingestor's Prometheus metrics, on the daemon's own registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from kit.metrics import Metrics

_PRODUCE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class IngestorMetrics:
    def __init__(self, metrics: Metrics) -> None:
        registry = metrics.registry
        self.frames_published = Counter(
            "carmesh_ingestor_frames_published_total",
            "Frames the broker acknowledged, by origin (folder, video, stream, client, dataset)",
            ["origin"],
            registry=registry,
        )
        self.bytes_published = Counter(
            "carmesh_ingestor_bytes_published_total",
            "Serialized frame bytes the broker acknowledged",
            registry=registry,
        )
        self.frames_dropped = Counter(
            "carmesh_ingestor_frames_dropped_total",
            "Live-stream frames replaced by newer ones before they could be published",
            registry=registry,
        )
        self.frames_rejected = Counter(
            "carmesh_ingestor_frames_rejected_total",
            "Frames refused before publishing (invalid client frames, unusable data set items)",
            ["origin"],
            registry=registry,
        )
        self.frames_failed = Counter(
            "carmesh_ingestor_frames_failed_total",
            "Frames the broker refused for good (too large, not authorised)",
            registry=registry,
        )
        self.produce_retries = Counter(
            "carmesh_ingestor_produce_retries_total",
            "Re-sends after a produce failed (broker down or slow)",
            registry=registry,
        )
        self.produce_seconds = Histogram(
            "carmesh_ingestor_produce_seconds",
            "From handing a frame to the producer to the broker's acknowledgement (including re-sends)",
            registry=registry,
            buckets=_PRODUCE_BUCKETS_S,
        )
        self.frames_buffered = Gauge(
            "carmesh_ingestor_frames_buffered",
            "Frames handed to the producer and not yet acknowledged",
            registry=registry,
        )
        self.broker_connected = Gauge(
            "carmesh_ingestor_broker_connected",
            "1 while the last produce succeeded (or none failed since connecting), else 0",
            registry=registry,
        )
        self.stream_disconnects = Counter(
            "carmesh_ingestor_stream_disconnects_total",
            "Live streams lost (read failed: camera or network down)",
            registry=registry,
        )
        self.stream_reconnects = Counter(
            "carmesh_ingestor_stream_reconnects_total",
            "Live streams reopened after a loss",
            registry=registry,
        )
        self.stream_open_failures = Counter(
            "carmesh_ingestor_stream_open_failures_total",
            "Failed attempts to reopen a lost live stream (retried with backoff)",
            registry=registry,
        )
        self.streams_down = Gauge(
            "carmesh_ingestor_streams_down",
            "Running live-stream sources that lost their stream and are reconnecting",
            registry=registry,
        )
