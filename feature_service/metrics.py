"""The feature service's own Prometheus metrics, on the daemon's kit registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from kit.metrics import Metrics

_BATCH_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class FeatureMetrics:
    def __init__(self, metrics: Metrics) -> None:
        registry = metrics.registry
        self.frames_stored = Counter(
            "carmesh_feature_frames_stored_total", "Frames newly stored in PostgreSQL", registry=registry
        )
        self.frames_duplicate = Counter(
            "carmesh_feature_frames_duplicate_total",
            "Frames skipped because their frame_id was already stored (replays, producer retries)",
            registry=registry,
        )
        self.frames_dlq = Counter(
            "carmesh_feature_frames_dlq_total",
            "Frames sent to the dead-letter topic, by reason",
            ["reason"],
            registry=registry,
        )
        self.detection_runs_stored = Counter(
            "carmesh_feature_detection_runs_stored_total",
            "FrameDetections newly stored (one per frame and model version)",
            registry=registry,
        )
        self.predictions_stored = Counter(
            "carmesh_feature_predictions_stored_total", "Detections (boxes) newly stored", registry=registry
        )
        self.detections_duplicate = Counter(
            "carmesh_feature_detections_duplicate_total",
            "FrameDetections skipped because that frame and model version were already stored",
            registry=registry,
        )
        self.detections_rejected = Counter(
            "carmesh_feature_detections_rejected_total",
            "FrameDetections dropped as unusable, by reason",
            ["reason"],
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "carmesh_feature_batch_seconds",
            "Time from poll to commit of one batch, by consumer",
            ["consumer"],
            buckets=_BATCH_BUCKETS_S,
            registry=registry,
        )
        self.batch_records = Counter(
            "carmesh_feature_records_total",
            "Kafka records handled and committed, by consumer",
            ["consumer"],
            registry=registry,
        )
        self.store_retries = Counter(
            "carmesh_feature_store_retries_total",
            "Batches retried because a store (PostgreSQL, blobs, DLQ) failed, by consumer",
            ["consumer"],
            registry=registry,
        )
        self.online_write_errors = Counter(
            "carmesh_feature_online_write_errors_total",
            "Redis writes that failed (online features are best effort), by consumer",
            ["consumer"],
            registry=registry,
        )
        self.batches_isolated = Counter(
            "carmesh_feature_batches_isolated_total",
            "Batches that failed max_store_attempts times without an outage and were stored record by record "
            "(those failing alone go to the DLQ), by consumer",
            ["consumer"],
            registry=registry,
        )
        self.detections_dlq = Counter(
            "carmesh_feature_detections_dlq_total",
            "FrameDetections records sent to the detections dead-letter topic, by reason",
            ["reason"],
            registry=registry,
        )
        self.redis_outages = Counter(
            "carmesh_feature_redis_outages_total",
            "Redis outages seen by the consumers' online writes (each counted once, until the rebuild ends it)",
            registry=registry,
        )
        self.redis_up = Gauge(
            "carmesh_feature_redis_up",
            "0 from a failed online write until the lost cameras are rebuilt",
            registry=registry,
        )
        self.online_repair_pending = Gauge(
            "carmesh_feature_online_repair_pending",
            "Cameras whose online features wait to be rebuilt from PostgreSQL after a Redis outage",
            registry=registry,
        )
        self.online_rebuilt_cameras = Counter(
            "carmesh_feature_online_rebuilt_cameras_total",
            "Cameras whose online features were rebuilt from PostgreSQL after a Redis outage",
            registry=registry,
        )
        self.blob_gc_runs = Counter("carmesh_feature_blob_gc_runs_total", "Blob collector passes", registry=registry)
        self.blob_gc_removed = Counter(
            "carmesh_feature_blob_gc_removed_total",
            "Blobs removed because no frame row references them",
            registry=registry,
        )
        self.blob_gc_removed_bytes = Counter(
            "carmesh_feature_blob_gc_removed_bytes_total", "Bytes of the blobs the collector removed", registry=registry
        )
        self.blob_store_bytes = Gauge(
            "carmesh_feature_blob_store_bytes",
            "Bytes in the local blob store after the last collection",
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "carmesh_feature_consumer_lag",
            "Records behind the partition's high watermark after the last batch",
            ["topic", "partition"],
            registry=registry,
        )
