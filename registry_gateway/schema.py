"""The carmesh tag schema on MLflow model versions (see docs/registry.md) and the domain
records the gateway builds from MLflow entities."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kit.registry_tags import (
    ALIAS_HISTORY_PREFIX,
    ONNX_FILE,
    TAG_CLASS_NAMES,
    TAG_FAMILY,
    TAG_INPUT_HEIGHT,
    TAG_INPUT_WIDTH,
    TAG_ONNX_PATH,
    TAG_SHA256,
    TAG_SIZE_BYTES,
)


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


def version_tags(
    family: Family, class_names: tuple[str, ...], input_width: int, input_height: int, sha256: str, size_bytes: int
) -> dict[str, str]:
    """The carmesh tags of a version whose ONNX file is ``model/model.onnx`` of its run."""
    return {
        TAG_FAMILY: family.value,
        TAG_CLASS_NAMES: json.dumps(list(class_names)),
        TAG_INPUT_WIDTH: str(input_width),
        TAG_INPUT_HEIGHT: str(input_height),
        TAG_SHA256: sha256,
        TAG_SIZE_BYTES: str(size_bytes),
        TAG_ONNX_PATH: ONNX_FILE,
    }


def _int_tag(tags: dict[str, str], key: str) -> int:
    try:
        return int(tags.get(key, "0"))
    except ValueError:
        return 0


def _family_tag(tags: dict[str, str]) -> Family | None:
    try:
        return Family(tags.get(TAG_FAMILY, ""))
    except ValueError:
        return None


def _names_tag(tags: dict[str, str]) -> tuple[str, ...]:
    # A malformed tag (written by hand) reads as "no names" rather than failing every read.
    try:
        names = json.loads(tags.get(TAG_CLASS_NAMES, "[]"))
    except json.JSONDecodeError:
        return ()
    return tuple(str(n) for n in names) if isinstance(names, list) else ()


def version_info(mv: Any, metrics: dict[str, float] | None = None) -> ModelVersionInfo:
    """Builds the record from an ``mlflow.entities.model_registry.ModelVersion``."""
    tags = {str(k): str(v) for k, v in (mv.tags or {}).items()}
    return ModelVersionInfo(
        name=mv.name,
        version=str(mv.version),
        aliases=tuple(mv.aliases or ()),
        family=_family_tag(tags),
        class_names=_names_tag(tags),
        input_width=_int_tag(tags, TAG_INPUT_WIDTH),
        input_height=_int_tag(tags, TAG_INPUT_HEIGHT),
        sha256=tags.get(TAG_SHA256, ""),
        size_bytes=_int_tag(tags, TAG_SIZE_BYTES),
        created_at_ms=int(mv.creation_timestamp or 0),
        description=mv.description or "",
        run_id=mv.run_id or "",
        source=mv.source or "",
        onnx_path=tags.get(TAG_ONNX_PATH, ONNX_FILE) or ONNX_FILE,
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


def alias_history_key(alias: str) -> str:
    return ALIAS_HISTORY_PREFIX + alias


def parse_alias_history(raw: str | None) -> list[str]:
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []
