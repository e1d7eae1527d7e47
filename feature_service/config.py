"""Settings of the feature service (env prefix ``CARMESH_FEATURE_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from kit.config import BaseSettings, not_below, stripped_entries


class Settings(BaseSettings):
    """Consumes frames and detections from Kafka into PostgreSQL, a blob store and Redis; serves
    online features and versioned dataset snapshots over gRPC."""

    grpc_port: int = Field(50063, ge=0, le=65535, description="gRPC port (0: any free port)")
    metrics_port: int = Field(9463, ge=0, le=65535, description="Prometheus /metrics port (0: any free port)")

    # Kafka.
    kafka_bootstrap: str = Field("127.0.0.1:9092", min_length=1, description="Kafka bootstrap servers, HOST:PORT,...")
    kafka_idempotence: bool = Field(
        True, description="idempotent DLQ producer (off for the local Tansu broker, which lacks InitProducerId)"
    )
    kafka_session_timeout_ms: int = Field(
        10_000, ge=1000, le=300_000, description="consumer group session timeout: how soon a dead member is replaced"
    )
    kafka_max_poll_interval_ms: int = Field(
        300_000,
        ge=1000,
        le=86_400_000,
        description="longest time a consumer may go without polling (a batch retried while a store is down) "
        "before it leaves its group; it rejoins at the next poll, from the committed offsets",
    )
    frames_group: str = Field("carmesh-feature-service", min_length=1, description="consumer group on frames")
    detections_group: str = Field(
        "carmesh-feature-service-detections", min_length=1, description="consumer group on detections"
    )
    consume_frames: bool = Field(True, description="run the frames consumer (off: an RPC-only replica)")
    consume_detections: bool = Field(True, description="run the detections consumer")
    create_topics: bool = Field(True, description="create missing topics with the default partition counts")
    frames_batch_size: int = Field(64, ge=1, le=10_000, description="most frames per poll (one transaction each)")
    detections_batch_size: int = Field(256, ge=1, le=100_000, description="most detections messages per poll")
    poll_timeout_ms: int = Field(500, ge=10, le=60_000, description="how long one poll waits for records")

    # Stores.
    postgres_dsn: str = Field("postgresql://postgres@127.0.0.1:5432/carmesh", description="PostgreSQL DSN")
    postgres_pool_size: int = Field(8, ge=2, le=256, description="most PostgreSQL connections")
    postgres_start_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="how long start-up waits for PostgreSQL before giving up"
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL of the online store")
    # Passwords come from files read at start: a flag would show in `ps`, and files rotate without
    # touching the daemon's command line. A password in the URL also works (not for `make up`).
    postgres_password_file: Path | None = Field(None, description="file holding PostgreSQL's password (first line)")
    redis_password_file: Path | None = Field(None, description="file holding Redis's password (first line)")
    features_ttl_s: int = Field(3600, ge=1, le=30 * 86400, description="lifetime of a camera's online features")
    car_classes: list[str] = Field(["car"], description="detection classes counted as cars (empty: every class)")
    blob_store: Literal["local", "s3"] = Field("local", description="where image bytes go: local or s3 (untested)")
    blob_dir: Path = Field(Path(".run/blobs"), description="root of the local blob store")
    s3_bucket: str = Field("", description="bucket of the s3 blob store")
    s3_prefix: str = Field("carmesh/blobs", description="key prefix in the s3 bucket")
    s3_endpoint_url: str = Field("", description="S3-compatible endpoint (empty: AWS)")

    blob_gc_interval_s: float = Field(
        3600.0,
        ge=0,
        le=7 * 86400,
        description="how often unreferenced blobs are collected (0: never; local store only)",
    )
    blob_gc_min_age_s: float = Field(
        3600.0,
        ge=1,
        le=30 * 86400,
        description="blobs last written more recently than this are never collected: must exceed the longest "
        "store attempt (blob put, then row insert)",
    )

    # Validation and work.
    max_image_bytes: int = Field(16 * 1024 * 1024, ge=1, description="largest encoded image accepted")
    max_image_pixels: int = Field(40_000_000, ge=1, description="largest image (width*height) accepted")
    decode_threads: int = Field(2, ge=1, le=64, description="threads decoding images and computing features")
    retry_initial_s: float = Field(0.5, gt=0, le=60, description="first retry delay while a store is down")
    retry_max_s: float = Field(30.0, gt=0, le=600, description="longest retry delay while a store is down")
    max_store_attempts: int = Field(
        5,
        ge=1,
        le=1000,
        description="tries of a batch whose store fails without an outage before its records are stored one by "
        "one and those that still fail go to the dead-letter topic (outages are retried forever)",
    )
    stream_page_frames: int = Field(32, ge=1, le=1024, description="frames StreamDataset reads per database page")

    @field_validator("postgres_dsn")
    @classmethod
    def _postgres(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql://USER@HOST:PORT/DB URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://HOST:PORT/DB URL")
        return value

    @field_validator("car_classes")
    @classmethod
    def _no_blank(cls, value: list[str]) -> list[str]:
        return stripped_entries(value)

    @field_validator("retry_max_s")
    @classmethod
    def _max_after_initial(cls, value: float, info: ValidationInfo) -> float:
        return not_below(value, info, "retry_initial_s")

    @model_validator(mode="after")
    def _bucket_for_s3(self) -> Settings:
        if self.blob_store == "s3" and not self.s3_bucket:
            raise ValueError("s3_bucket is required with blob_store=s3 (set --s3-bucket or CARMESH_FEATURE_S3_BUCKET)")
        return self
