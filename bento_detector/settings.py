"""Settings of the BentoML service, from ``CARMESH_BENTO_*`` environment variables (``bentoml serve``
owns the command line)."""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import Field, field_validator

from kit.config import BaseSettings, load_settings

ENV_PREFIX = "CARMESH_BENTO_"


class BentoSettings(BaseSettings):
    """The model comes from the registry by alias, fetched once at start (no hot reload: a new alias
    target needs a restart, or a rebuilt Bento)."""

    registry_addr: str = Field("127.0.0.1:50064", min_length=1, description="registry_gateway gRPC address")
    model_name: str = Field("car-detector", min_length=1, description="registered model name")
    model_alias: str = Field("champion", min_length=1, description="alias served")
    model_path: Path | None = Field(None, description="serve this local ONNX file instead of the registry")
    model_family: str = Field("yolov8", pattern="^(yolov8|yolox)$", description="output layout of model_path")
    class_names: list[str] = Field([], description="class names of model_path when the file has none")
    model_cache_dir: Path = Field(Path(".run/bento-cache"), description="downloaded ONNX files, named by sha256")
    input_width: int = Field(640, ge=32, le=8192, description="model input width when the ONNX input is dynamic")
    input_height: int = Field(640, ge=32, le=8192, description="model input height when the ONNX input is dynamic")
    registry_timeout_s: float = Field(60.0, gt=0, le=3600, description="deadline of the registry calls at start")
    intra_op_threads: int = Field(0, ge=0, le=256, description="ONNX Runtime intra-op threads (0: all cores)")

    score_threshold: float = Field(0.25, ge=0, le=1, description="default minimum score")
    iou_threshold: float = Field(0.6, ge=0, le=1, description="default NMS IoU threshold")
    max_detections: int = Field(100, ge=1, le=100_000, description="default most detections per image")
    max_image_pixels: int = Field(40_000_000, ge=1, description="largest image (width*height) accepted")

    @field_validator("score_threshold", "iou_threshold")
    @classmethod
    def _finite(cls, value: float) -> float:
        if math.isnan(value):
            raise ValueError("must be a number in [0, 1], got NaN")
        return value

    @field_validator("model_path", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value


def load() -> BentoSettings:
    """From the environment only; raises kit.config.ConfigError naming the variable."""
    return load_settings(BentoSettings, ENV_PREFIX, argv=[])
