"""Settings of the ingestor (env prefix ``CARMESH_INGESTOR_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator

from ingestor.frames import DEFAULT_MAX_IMAGE_PIXELS
from ingestor.streams import DEFAULT_DENIED, check_entries
from kit.config import BaseSettings, existing_dirs, not_below, stripped_entries
from kit.kafka import FRAMES_TOPIC, MAX_MESSAGE_BYTES

# Room for the Frame envelope (ids, annotations) next to the image in one Kafka message.
_ENVELOPE_BYTES = 1024 * 1024


class Settings(BaseSettings):
    """Publishes frames from folders, videos, live streams, gRPC clients and labelled data sets to Kafka."""

    grpc_port: int = Field(50062, ge=0, le=65535, description="gRPC port (0: any free port)")
    metrics_port: int = Field(9462, ge=0, le=65535, description="Prometheus /metrics port (0: any free port)")

    # Kafka.
    kafka_bootstrap: str = Field("127.0.0.1:9092", min_length=1, description="Kafka bootstrap servers (host:port,...)")
    kafka_idempotence: bool = Field(True, description="idempotent producer (off for brokers without InitProducerId)")
    frames_topic: str = Field(FRAMES_TOPIC, min_length=1, description="topic frames are published to")
    frames_partitions: int = Field(4, ge=1, le=1024, description="partitions of the frames topic when it is created")

    # Backpressure: frames handed to the producer and not yet acknowledged by the broker.
    max_in_flight: int = Field(128, ge=1, le=100_000, description="most frames buffered awaiting acknowledgement")
    publish_wait_ms: float = Field(
        5000.0, ge=0, le=600_000, description="how long a gRPC request waits for buffer room before UNAVAILABLE"
    )
    ack_wait_ms: float = Field(
        15000.0, ge=0, le=600_000, description="how long IngestFrames/ImportDataset wait for the last acknowledgements"
    )
    retry_initial_ms: float = Field(200.0, gt=0, le=60_000, description="first delay before re-sending a frame")
    retry_max_ms: float = Field(5000.0, gt=0, le=600_000, description="longest delay between re-sends")

    # Inputs.
    max_image_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1,
        le=MAX_MESSAGE_BYTES - _ENVELOPE_BYTES,
        description="largest encoded image accepted (bigger frames are rejected or skipped)",
    )
    max_image_pixels: int = Field(
        DEFAULT_MAX_IMAGE_PIXELS,
        ge=1,
        description="largest image (width*height, read from the header) accepted; bigger ones are rejected or skipped",
    )
    allowed_roots: list[Path] = Field(
        [],
        description="directories folder/video sources and imports may read (empty: requests may name no path)",
    )
    max_sources: int = Field(16, ge=1, le=1024, description="most sources running at once")
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of frames decoded from videos and streams")
    stream_open_timeout_ms: int = Field(2000, ge=100, le=120_000, description="timeout opening a live stream")
    stream_read_timeout_ms: int = Field(2000, ge=100, le=120_000, description="timeout reading a live stream frame")
    stream_reconnect_max_s: float = Field(10.0, gt=0, le=600, description="longest wait between stream reconnects")
    stream_allowed_hosts: list[str] = Field(
        [],
        description="stream hosts StartSource may open: IP addresses, CIDR networks, host names, *.domain "
        "(every address a name resolves to is checked; empty: no streams)",
    )
    stream_denied_networks: list[str] = Field(
        list(DEFAULT_DENIED),
        description="networks no stream may reach whatever stream_allowed_hosts says (link-local, metadata addresses)",
    )
    ffmpeg_capture_options: str = Field(
        "rtsp_transport;tcp|analyzeduration;0|probesize;32|max_redirects;0",
        description="OPENCV_FFMPEG_CAPTURE_OPTIONS for streams (TCP RTSP, fast open, no HTTP redirects: "
        "they would bypass stream_allowed_hosts), unless set in the environment",
    )
    state_dir: Path | None = Field(
        None,
        description="folder of sources.json: running sources and their acknowledged positions, resumed after "
        "a restart (unset: sources end with the process)",
    )
    state_flush_interval_ms: float = Field(
        200.0, gt=0, le=60_000, description="most often sources.json is rewritten while sources run"
    )
    progress_interval_ms: float = Field(500.0, ge=0, le=60_000, description="ImportDataset progress message interval")

    @field_validator("allowed_roots")
    @classmethod
    def _roots_exist(cls, value: list[Path]) -> list[Path]:
        return existing_dirs(value)

    @field_validator("stream_allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, value: list[str]) -> list[str]:
        return check_entries(stripped_entries(value), "stream_allowed_hosts", names=True)

    @field_validator("stream_denied_networks")
    @classmethod
    def _denied_networks(cls, value: list[str]) -> list[str]:
        return check_entries(stripped_entries(value), "stream_denied_networks", names=False)

    @field_validator("retry_max_ms")
    @classmethod
    def _max_after_initial(cls, value: float, info: ValidationInfo) -> float:
        return not_below(value, info, "retry_initial_ms")
