"""The domain records the gateway builds from MLflow entities; the carmesh tags they are read from
are kit/registry_tags.py's (see docs/registry.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kit.registry_tags import ONNX_FILE, VersionTags


class Family(StrEnum):
    """Output layout of a detector; the value is what ``carmesh.family`` holds."""

    YOLOV8 = "yolov8"
    YOLOX = "yolox"


@dataclass(frozen=True)
class ModelVersionInfo:
    name: str
    version: str
    aliases: tuple[str, ...] = ()
    family: Family | None = None
    class_names: tuple[str, ...] = ()
    input_width: int = 0
    input_height: int = 0
    sha256: str = ""
    size_bytes: int = 0
    created_at_ms: int = 0
    description: str = ""
    run_id: str = ""
    source: str = ""
    onnx_path: str = ONNX_FILE
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RegisteredModelInfo:
    name: str
    description: str = ""
    aliases: dict[str, str] = field(default_factory=dict)
    latest_version: str = ""
    created_at_ms: int = 0
    updated_at_ms: int = 0


def _family(value: str) -> Family | None:
    try:
        return Family(value)
    except ValueError:
        return None


def version_info(mv: Any, metrics: dict[str, float] | None = None) -> ModelVersionInfo:
    """Builds the record from an ``mlflow.entities.model_registry.ModelVersion``."""
    tags = {str(k): str(v) for k, v in (mv.tags or {}).items()}
    carmesh = VersionTags.parse(tags)
    return ModelVersionInfo(
        name=mv.name,
        version=str(mv.version),
        aliases=tuple(mv.aliases or ()),
        class_names=carmesh.class_names,
        input_width=carmesh.input_width,
        input_height=carmesh.input_height,
        sha256=carmesh.sha256,
        size_bytes=carmesh.size_bytes,
        created_at_ms=int(mv.creation_timestamp or 0),
        description=mv.description or "",
        run_id=mv.run_id or "",
        source=mv.source or "",
        onnx_path=carmesh.onnx_path,
        family=_family(carmesh.family),
        metrics=dict(metrics or {}),
        tags=tags,
    )


def registered_model_info(rm: Any, latest_version: str) -> RegisteredModelInfo:
    """Builds the record from an ``mlflow.entities.model_registry.RegisteredModel``."""
    return RegisteredModelInfo(
        name=rm.name,
        description=rm.description or "",
        aliases={str(k): str(v) for k, v in (rm.aliases or {}).items()},
        latest_version=latest_version,
        created_at_ms=int(rm.creation_timestamp or 0),
        updated_at_ms=int(rm.last_updated_timestamp or 0),
    )
