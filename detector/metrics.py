"""The detector's own Prometheus metrics, on the daemon's kit registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from kit.lru_files import Trim
from kit.metrics import Metrics

_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
_INFER_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class DetectorMetrics:
    def __init__(self, metrics: Metrics) -> None:
        registry = metrics.registry
        self.batch_size = Histogram(
            "carmesh_detector_batch_size", "Images per inference call", buckets=_BATCH_BUCKETS, registry=registry
        )
        self.queue_depth = Gauge(
            "carmesh_detector_queue_depth", "Requests admitted and not yet inferred", registry=registry
        )
        self.inference_seconds = Histogram(
            "carmesh_detector_inference_seconds",
            "Wall time of one inference call (a whole batch)",
            buckets=_INFER_BUCKETS_S,
            registry=registry,
        )
        self.rejected = Counter(
            "carmesh_detector_rejected_total",
            "Requests refused before inference, by reason",
            ["reason"],
            registry=registry,
        )
        self.reloads = Counter(
            "carmesh_detector_model_loads_total",
            "Model loads, by outcome (ok, failed)",
            ["outcome"],
            registry=registry,
        )
        self.model_loaded = Gauge("carmesh_detector_model_loaded", "1 while a model is being served", registry=registry)
        self.model_cache_bytes = Gauge(
            "carmesh_detector_model_cache_bytes", "Bytes of ONNX files in the model cache", registry=registry
        )
        self.model_cache_evictions = Counter(
            "carmesh_detector_model_cache_evictions_total",
            "ONNX files removed from the model cache to keep it under its bound",
            registry=registry,
        )
        self.model_cache_evicted_bytes = Counter(
            "carmesh_detector_model_cache_evicted_bytes_total",
            "Bytes removed from the model cache to keep it under its bound",
            registry=registry,
        )

    def on_cache_trim(self, trim: Trim) -> None:
        self.model_cache_bytes.set(trim.kept_bytes)
        self.model_cache_evictions.inc(len(trim.removed))
        self.model_cache_evicted_bytes.inc(trim.removed_bytes)


class StreamMetrics:
    """The Kafka side: frames consumed from carmesh.frames.v1 and what became of them."""

    def __init__(self, metrics: Metrics) -> None:
        registry = metrics.registry
        self.frames = Counter(
            "carmesh_detector_stream_frames_total",
            "Frames taken from the frames topic, by outcome "
            "(published, skipped_undecodable, skipped_invalid_name, dead_lettered, skipped_failed)",
            ["outcome"],
            registry=registry,
        )
        self.retries = Counter(
            "carmesh_detector_stream_retries_total",
            "Retries of a frame's detection or publication, by reason",
            ["reason"],
            registry=registry,
        )
        self.inflight = Gauge(
            "carmesh_detector_stream_inflight", "Frames taken from the topic and not yet committed", registry=registry
        )
        self.paused = Gauge(
            "carmesh_detector_stream_paused",
            "1 while consumption is paused because no model is loaded",
            registry=registry,
        )
        self.committed = Counter(
            "carmesh_detector_stream_commits_total", "Offset commits to the frames consumer group", registry=registry
        )
