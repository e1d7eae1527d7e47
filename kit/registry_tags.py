"""The carmesh schema on MLflow model versions (docs/registry.md): tag names, the shapes of their
values, the files of a version, and the key of an evaluation. The one place that writes and reads
them, for the writers (registry_gateway's import, the trainer) and the readers (registry_gateway,
the promotion gate in the CLI): no other module spells a ``carmesh.*`` tag or parses its value."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Every carmesh tag starts so; users' own tags must not (the registry refuses them).
TAG_PREFIX = "carmesh."
TAG_FAMILY = "carmesh.family"
TAG_CLASS_NAMES = "carmesh.class_names"
TAG_INPUT_WIDTH = "carmesh.input_width"
TAG_INPUT_HEIGHT = "carmesh.input_height"
TAG_SHA256 = "carmesh.sha256"
TAG_SIZE_BYTES = "carmesh.size_bytes"
TAG_ONNX_PATH = "carmesh.onnx_path"
# Evaluations of a version: JSON {"<eval key>": {"map50": .., "map50_95": .., ...}}.
TAG_EVAL = "carmesh.eval"
TAG_TRAIN_DATASET = "carmesh.train.dataset"
TAG_JOB_ID = "carmesh.job_id"
# "float32" or "int8": the number format of a trained version's ONNX file (trainer_worker.quantize).
TAG_PRECISION = "carmesh.precision"
# The name of the file a user imported (registry_gateway's ImportModel).
TAG_FILE_NAME = "carmesh.file_name"
# Tags of the MLflow run that holds an imported version's files.
RUN_TAG_KIND = "carmesh.kind"
RUN_TAG_MODEL_NAME = "carmesh.model_name"
RUN_KIND_IMPORT = "import"
# Registered model tag prefix: JSON list of the versions an alias pointed at, oldest first.
ALIAS_HISTORY_PREFIX = "carmesh.alias_history."
# The files of a version, logged under MODEL_ARTIFACT_DIR of its MLflow run.
MODEL_ARTIFACT_DIR = "model"
ONNX_FILE = "model.onnx"
TRITON_CONFIG_FILE = "config.pbtxt"
MANIFEST_FILE = "carmesh.json"


@dataclass(frozen=True)
class EvalKey:
    """Which evaluations are comparable: the same validation data, scored classes and don't-care classes.

    Its text form (``apollo:1|car|bus,truck,van``) keys the ``carmesh.eval`` tag.
    """

    dataset: str
    classes: tuple[str, ...]
    ignore_classes: tuple[str, ...] = ()

    @classmethod
    def of(cls, dataset: str, classes: Sequence[str], ignore_classes: Sequence[str] = ()) -> EvalKey:
        return cls(dataset, tuple(classes), tuple(sorted(ignore_classes)))

    @classmethod
    def parse(cls, key: str) -> EvalKey:
        dataset, _, rest = key.partition("|")
        classes, _, ignore = rest.partition("|")
        return cls(dataset, tuple(c for c in classes.split(",") if c), tuple(c for c in ignore.split(",") if c))

    @property
    def key(self) -> str:
        return f"{self.dataset}|{','.join(self.classes)}|{','.join(self.ignore_classes)}"

    def __str__(self) -> str:
        ignore = f", don't care {','.join(self.ignore_classes)}" if self.ignore_classes else ""
        return f"{self.dataset} ({','.join(self.classes)}{ignore})"


@dataclass(frozen=True)
class VersionTags:
    """The tags that describe a version's ONNX file (``model/<onnx_path>`` of its run), as values.

    ``family`` is the value of ``carmesh.family`` (``yolov8``, ``yolox``); the registry maps it to its enum.
    """

    family: str
    class_names: tuple[str, ...]
    input_width: int
    input_height: int
    sha256: str
    size_bytes: int
    onnx_path: str = ONNX_FILE

    def tags(self) -> dict[str, str]:
        """The tag values MLflow stores (all strings; class names as a JSON list)."""
        return {
            TAG_FAMILY: self.family,
            TAG_CLASS_NAMES: json.dumps(list(self.class_names)),
            TAG_INPUT_WIDTH: str(self.input_width),
            TAG_INPUT_HEIGHT: str(self.input_height),
            TAG_SHA256: self.sha256,
            TAG_SIZE_BYTES: str(self.size_bytes),
            TAG_ONNX_PATH: self.onnx_path,
        }

    @classmethod
    def parse(cls, tags: Mapping[str, str]) -> VersionTags:
        """Reads the tags back; a missing or malformed tag (written by hand) reads as empty or 0 rather
        than failing every read of the version."""
        return cls(
            family=tags.get(TAG_FAMILY, ""),
            class_names=_json_names(tags.get(TAG_CLASS_NAMES)),
            input_width=_int(tags.get(TAG_INPUT_WIDTH)),
            input_height=_int(tags.get(TAG_INPUT_HEIGHT)),
            sha256=tags.get(TAG_SHA256, ""),
            size_bytes=_int(tags.get(TAG_SIZE_BYTES)),
            onnx_path=tags.get(TAG_ONNX_PATH) or ONNX_FILE,
        )


def _int(value: str | None) -> int:
    try:
        return int(value or "0")
    except ValueError:
        return 0


def _json(value: str | None) -> object:
    try:
        return json.loads(value) if value else None
    except json.JSONDecodeError:
        return None


def _json_names(value: str | None) -> tuple[str, ...]:
    names = _json(value)
    return tuple(str(n) for n in names) if isinstance(names, list) else ()


def parse_evaluations(raw: str | None) -> dict[str, dict[str, float]]:
    """The ``carmesh.eval`` tag's evaluations by eval key (each with at least ``map50``); a malformed
    tag reads as none."""
    found = _json(raw)
    if not isinstance(found, dict):
        return {}
    return {str(k): v for k, v in found.items() if isinstance(v, dict) and "map50" in v}


def merged_eval_tag(existing: str | None, key: str, result: Mapping[str, float]) -> str:
    """The ``carmesh.eval`` value with ``result`` set for ``key``, keeping the other keys of ``existing``."""
    found = _json(existing)
    evals = found if isinstance(found, dict) else {}
    evals[key] = {k: round(float(v), 6) for k, v in result.items()}
    return json.dumps(evals, sort_keys=True)


def alias_history_key(alias: str) -> str:
    """The registered-model tag that holds the history of ``alias``."""
    return ALIAS_HISTORY_PREFIX + alias


def alias_history_tag(versions: Sequence[str]) -> str:
    return json.dumps(list(versions))


def parse_alias_history(raw: str | None) -> list[str]:
    """The versions an alias pointed at, oldest first; a malformed tag reads as no history."""
    value = _json(raw)
    return [str(v) for v in value] if isinstance(value, list) else []
