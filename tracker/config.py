"""Settings of the tracker daemon (env prefix ``CARMESH_TRACKER_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from kit.config import BaseSettings
from kit.kafka import DETECTIONS_TOPIC

EVENTS_TOPIC = "carmesh.events.v1"
TRACKS_TOPIC = "carmesh.tracks.v1"


class Settings(BaseSettings):
    """Tracks every camera's detections and counts crossings and zone changes into PostgreSQL."""

    grpc_port: int = Field(50066, ge=0, le=65535, description="gRPC port (0: any free port)")
    metrics_port: int = Field(9466, ge=0, le=65535, description="Prometheus /metrics port (0: any free port)")

    kafka_bootstrap: str = Field("127.0.0.1:9092", min_length=1, description="Kafka bootstrap servers, HOST:PORT,...")
    detections_topic: str = Field(DETECTIONS_TOPIC, min_length=1, description="topic of FrameDetections, by camera")
    events_topic: str = Field(EVENTS_TOPIC, min_length=1, description="topic of TrackEvents (crossings, zone changes)")
    tracks_topic: str = Field(TRACKS_TOPIC, min_length=1, description="topic of FrameTracks (each frame's tracks)")
    kafka_idempotence: bool = Field(
        True, description="idempotent events producer (off for the local Tansu broker, which lacks InitProducerId)"
    )
    group_id: str = Field("carmesh-tracker", min_length=1, description="consumer group: replicas split the cameras")
    kafka_session_timeout_ms: int = Field(
        10_000, ge=1000, le=300_000, description="consumer group session timeout: how soon a dead replica is replaced"
    )
    batch_size: int = Field(256, ge=1, le=100_000, description="most detections messages per poll (one transaction)")
    poll_timeout_ms: int = Field(200, ge=10, le=60_000, description="how long one poll waits for records")

    postgres_dsn: str = Field("postgresql://postgres@127.0.0.1:5432/carmesh", description="PostgreSQL DSN")
    postgres_password_file: Path | None = Field(None, description="file holding PostgreSQL's password (first line)")
    postgres_pool_size: int = Field(4, ge=2, le=256, description="most PostgreSQL connections")
    postgres_start_timeout_s: float = Field(60.0, gt=0, le=3600, description="how long start-up waits for PostgreSQL")

    redis_url: str = Field("", description="Redis URL of the online counts (empty: none)")
    redis_password_file: Path | None = Field(None, description="file holding Redis's password (first line)")
    online_ttl_s: int = Field(86400, ge=1, le=30 * 86400, description="lifetime of a camera's online counts")

    lost_track_s: float = Field(1.0, gt=0, le=60, description="how long a track outlives its last box (occlusions)")
    idle_camera_s: float = Field(
        600.0,
        ge=1,
        le=7 * 86400,
        description="a camera without frames this long leaves memory; its checkpoint stays in PostgreSQL",
    )
    counts_retention_days: int = Field(
        0, ge=0, le=36500, description="per-minute counts older than this many days are deleted (0: kept forever)"
    )
    retention_interval_s: float = Field(
        3600.0, ge=1, le=7 * 86400, description="how often counts older than the retention are deleted"
    )
