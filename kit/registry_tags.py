"""The carmesh schema on MLflow model versions (docs/registry.md): tag names, the files of a version,
and the key of an evaluation. One definition for the writers (registry_gateway's import, the trainer)
and the readers (registry_gateway, the promotion gate in the CLI)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
