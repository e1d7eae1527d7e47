"""Settings of the detector (env prefix ``CARMESH_DETECTOR_``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from kit.config import BaseSettings, not_below, stripped_entries
from kit.kafka import DETECTIONS_TOPIC, FRAMES_TOPIC

Family = Literal["yolov8", "yolox"]
# Where ONNX Runtime runs the model (detector/devices.py).
Device = Literal["auto", "cpu", "cuda", "tensorrt"]


class Settings(BaseSettings):
    """Serves the registered ONNX car detector over gRPC with dynamic micro-batching and hot reload."""

    grpc_port: int = Field(50061, ge=0, le=65535, description="gRPC port (0: any free port)")
    metrics_port: int = Field(9461, ge=0, le=65535, description="Prometheus /metrics port (0: any free port)")

    # Where the model comes from: the registry (default) or a local file.
    model_name: str = Field("car-detector", min_length=1, description="registered model name")
    model_alias: str = Field("champion", min_length=1, description="alias served and watched for hot reload")
    registry_addr: str = Field("127.0.0.1:50064", min_length=1, description="registry_gateway gRPC address")
    model_path: Path | None = Field(
        None, description="serve this local ONNX file instead of the registry (no hot reload)"
    )
    model_family: Family = Field("yolov8", description="output layout of --model-path: yolov8 or yolox")
    class_names: list[str] = Field([], description="class names of --model-path when the file has no `names` metadata")
    model_cache_dir: Path = Field(Path(".run/detector-cache"), description="downloaded ONNX files, named by sha256")
    model_cache_max_bytes: int = Field(
        2 * 1024**3,
        ge=0,
        description="most bytes of ONNX files kept in model_cache_dir, least recently used out "
        "(0: no bound; the served and last-known-good models are always kept)",
    )
    input_width: int = Field(640, ge=32, le=8192, description="model input width when the ONNX input is dynamic")
    input_height: int = Field(640, ge=32, le=8192, description="model input height when the ONNX input is dynamic")
    download_chunk_bytes: int = Field(0, ge=0, le=16 * 1024 * 1024, description="chunk size asked of the registry")
    registry_retry_initial_s: float = Field(0.5, gt=0, le=60, description="first reconnect delay to the registry")
    registry_retry_max_s: float = Field(15.0, gt=0, le=600, description="longest reconnect delay to the registry")

    # Engine.
    device: Device = Field(
        "auto",
        description="where the model runs: auto (CUDA when this onnxruntime build and a GPU are there, else CPU; "
        "logged), cpu, cuda or tensorrt (absent: the detector does not start)",
    )
    providers: list[str] = Field(
        [],
        description="ONNX Runtime execution providers in order, instead of --device (empty: from --device)",
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="ONNX Runtime intra-op threads per run (0: CPU cores / inference_threads, so concurrent runs "
        "share the cores instead of oversubscribing them)",
    )
    solo_batch_all_cores: bool = Field(
        True,
        description="a batch that runs while no other does uses every core, through a second ONNX Runtime session "
        "of the model (CPU only; off, or intra_op_threads set: one session, the cores split over inference_threads)",
    )
    warmup: bool = Field(True, description="run one dummy batch through a model before serving it")

    # Where inference runs: ONNX Runtime here, or a Triton server (pre/post-processing stay here either way).
    backend: Literal["onnxruntime", "triton"] = Field(
        "onnxruntime", description="onnxruntime: in this process; triton: batches go to --triton-url over gRPC"
    )
    triton_url: str = Field("127.0.0.1:8001", min_length=1, description="Triton gRPC address (HOST:PORT)")
    triton_model: str = Field(
        "",
        description="the model's name in Triton (empty: the registry model's name); {name} and {version} are "
        "replaced, and with {version} in it each version is a Triton model of its own",
    )
    triton_model_control: Literal["explicit", "none"] = Field(
        "explicit",
        description="explicit: load each served version into Triton through its model-control API; none: wait "
        "until Triton itself has the version ready (a polled model repository, pytriton)",
    )
    triton_shared_memory: bool = Field(
        False, description="send tensors through system shared memory (Triton on this host, same /dev/shm)"
    )
    triton_timeout_s: float = Field(30.0, gt=0, le=3600, description="deadline of one inference call to Triton")
    triton_ready_timeout_s: float = Field(
        120.0, gt=0, le=3600, description="how long a version may take to load or become ready in Triton"
    )

    # Batching and admission.
    max_batch_size: int = Field(8, ge=1, le=256, description="most images per inference call")
    max_wait_ms: float = Field(5.0, ge=0, le=10_000, description="how long a batch waits to fill after its first image")
    max_queue: int = Field(64, ge=1, le=100_000, description="most requests admitted and not yet inferred")
    inference_threads: int = Field(
        2, ge=1, le=64, description="batches running session.run at once (each uses ORT's own intra-op pool)"
    )
    preprocess_threads: int = Field(2, ge=1, le=64, description="threads decoding, letterboxing, post-processing")
    stream_window: int = Field(8, ge=1, le=1024, description="DetectStream items in flight per stream")
    drain_timeout_s: float = Field(30.0, gt=0, le=3600, description="how long a replaced model may finish its work")

    # Request defaults and limits.
    score_threshold: float = Field(0.25, ge=0, le=1, description="default minimum score")
    # 0.6 rather than 0.45: parked and queued cars overlap; on apollo-cars val it gains 0.012 car AP50 for both
    # our model and YOLOX-nano (docs/training.md). Ultralytics uses 0.7.
    iou_threshold: float = Field(0.6, ge=0, le=1, description="default NMS IoU threshold")
    classes: list[str] = Field([], description="default class filter by name (empty: all)")
    max_detections: int = Field(100, ge=1, le=100_000, description="default most detections per image")
    max_image_pixels: int = Field(40_000_000, ge=1, description="largest image (width*height) accepted")

    # Streaming detection: frames from Kafka, detections back to Kafka (off: gRPC only).
    stream_consumer: bool = Field(False, description="also detect the frames on carmesh.frames.v1")
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers (host:port,...)")
    kafka_idempotence: bool = Field(True, description="idempotent producer (off for brokers without InitProducerId)")
    stream_group_id: str = Field("carmesh-detector", min_length=1, description="consumer group of the frames")
    stream_max_inflight: int = Field(
        0, ge=0, le=100_000, description="frames from the stream detected at once (<= max_queue; 0: half of it)"
    )
    stream_retry_max_s: float = Field(
        2.0, gt=0, le=600, description="longest wait between retries of a frame (queue full, broker down)"
    )
    stream_session_timeout_ms: int = Field(
        10_000, ge=1000, le=300_000, description="frames consumer's group session timeout: how soon a dead member goes"
    )
    stream_max_poll_interval_ms: int = Field(
        300_000,
        ge=1000,
        le=86_400_000,
        description="frames consumer: longest time without a poll (a full window while the broker is down) before "
        "the member leaves its group; it rejoins at the next poll, from the committed offsets",
    )
    frames_topic: str = Field(FRAMES_TOPIC, min_length=1, description="topic the stream consumes frames from")
    detections_topic: str = Field(
        DETECTIONS_TOPIC, min_length=1, description="topic the stream publishes FrameDetections to (key: camera)"
    )

    @field_validator("stream_max_inflight")
    @classmethod
    def _inflight_fits_queue(cls, value: int, info: ValidationInfo) -> int:
        max_queue = info.data.get("max_queue")
        if max_queue is not None and value > max_queue:
            raise ValueError(f"must be <= max_queue ({max_queue}): the stream cannot hold more than the queue takes")
        return value

    @field_validator("triton_model")
    @classmethod
    def _triton_model(cls, value: str) -> str:
        rest = value.replace("{name}", "").replace("{version}", "")
        if "{" in rest or "}" in rest or any(c.isspace() or c == "/" for c in rest):
            raise ValueError(f"a Triton model name with at most {{name}} and {{version}} in it, got {value!r}")
        return value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        servers = [item.strip() for item in value.split(",") if item.strip()]
        if not servers or any(":" not in item for item in servers):
            raise ValueError(f"expected host:port[,host:port...], got {value!r}")
        return ",".join(servers)

    @field_validator("score_threshold", "iou_threshold")
    @classmethod
    def _finite(cls, value: float) -> float:
        if math.isnan(value):
            raise ValueError("must be a number in [0, 1], got NaN")
        return value

    @field_validator("providers", "class_names", "classes")
    @classmethod
    def _no_blank(cls, value: list[str]) -> list[str]:
        return stripped_entries(value)

    @field_validator("registry_retry_max_s")
    @classmethod
    def _max_after_initial(cls, value: float, info: ValidationInfo) -> float:
        return not_below(value, info, "registry_retry_initial_s")

    @field_validator("model_path", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("model_path")
    @classmethod
    def _model_file(cls, value: Path | None) -> Path | None:
        # Fail at start with the path in the message rather than on the first request.
        if value is not None and not value.is_file():
            raise ValueError(f"{str(value)!r} is not a file")
        return value

    @property
    def stream_inflight_frames(self) -> int:
        """The stream's window; half the queue by default, leaving the rest to gRPC clients."""
        return self.stream_max_inflight or max(1, self.max_queue // 2)

    @property
    def model_source(self) -> str:
        """For people: where the served model comes from."""
        if self.model_path is not None:
            return f"file {self.model_path}"
        return f"{self.model_name}@{self.model_alias} from registry at {self.registry_addr}"
