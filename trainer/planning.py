"""From a training request to the job spec its workers run: validation (so a bad request fails
at once with INVALID_ARGUMENT / NOT_FOUND, not minutes later in a worker), data set resolution
(a local folder, or a feature_service snapshot cached on this machine) and the JobSpec."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kit.mesh_tls import MeshTls
from kit.paths import AllowedRoots
from trainer.errors import BadRequest, DatasetNotFound
from trainer.jobspec import JobSpec
from trainer.modelspec import PRESETS, SIZE_MULTIPLE
from trainer.snapshots import SnapshotRef, looks_like_folder, materialize, parse_ref, resolve

DEFAULT_INPUT_WIDTH = 960
DEFAULT_INPUT_HEIGHT = 544
MAX_INPUT_SIDE_PX = 4096
ROOTS_SETTING = "--allowed-roots (CARMESH_TRAINER_ALLOWED_ROOTS)"
MAX_EPOCHS = 10_000
# Seconds of a time-limited job spent before the first step: worker processes, TensorFlow, data.
STARTUP_ALLOWANCE_S = 30
# A training budget of at most this many seconds gets SHORT_SCHEDULE (the Recipe fields the request does
# not set). The Recipe's defaults are tuned for the 28-minute job; a few minutes buy too few of its
# updates (the 6-minute demo job scored 0.377 car AP50), while smaller crops at batch 2 make ~4x the
# updates per second. Measured on apollo-cars, 2 cores (docs/training.md, "Short budgets").
# The registered ONNX file's number format when the request names none: int8 runs 2.3x float32's
# images/s on CPUs with VNNI at car AP50 within 0.005 (docs/benchmarks.md, "Export precision");
# GPU deployments ask for float32.
DEFAULT_EXPORT_PRECISION = "int8"
EXPORT_PRECISIONS = ("float32", "int8")
SHORT_BUDGET_S = 900.0
SHORT_SCHEDULE: dict[str, Any] = {
    "batch_size": 2,
    "crop_width": 512,
    "crop_height": 256,
    "warmup_steps": 30,
}


@dataclass(frozen=True)
class TrainRequest:
    dataset: str
    preset: str = "n"
    input_width: int = 0  # 0: default
    input_height: int = 0
    epochs: int = 0  # 0: the recipe's
    batch_size: int = 0
    learning_rate: float = 0.0
    classes: tuple[str, ...] = ()
    ignore_classes: tuple[str, ...] = ()
    init_checkpoint: str = ""
    crop_width: int = 0
    crop_height: int = 0
    max_duration_s: int = 0
    seed: int = 0
    workers: int = 1
    model_name: str = ""
    precision: str = ""  # "": DEFAULT_EXPORT_PRECISION


@dataclass(frozen=True)
class Planner:
    feature_addr: str
    cache_dir: Path
    allowed_roots: tuple[Path, ...]
    max_workers: int
    cpu_threads: int
    defaults: dict[str, Any] = field(default_factory=dict)  # JobSpec fields from settings (mlflow, registry...)
    mesh_tls: MeshTls | None = None  # the trainer's identity for its calls to feature_service

    def validate(self, req: TrainRequest) -> None:
        """Everything a local job needs: the request's shape, the folder or snapshot name, the checkpoint."""
        self.validate_shape(req)
        if req.init_checkpoint:
            self.checkpoint(req.init_checkpoint)
        if looks_like_folder(req.dataset):
            self.folder(req.dataset)

    def validate_shape(self, req: TrainRequest) -> None:
        """What holds wherever the job runs (here or as a TFJob on a cluster)."""
        if not req.dataset.strip():
            raise BadRequest(
                "dataset is required: a snapshot name ('apollo', 'apollo:2') or a local folder", field="dataset"
            )
        if req.preset not in PRESETS:
            raise BadRequest(f"unknown preset {req.preset!r}; use one of {', '.join(PRESETS)}", field="config.preset")
        for label, value in (
            ("input_width", req.input_width),
            ("input_height", req.input_height),
            ("crop_width", req.crop_width),
            ("crop_height", req.crop_height),
        ):
            if value and (value < SIZE_MULTIPLE or value % SIZE_MULTIPLE or value > MAX_INPUT_SIDE_PX):
                raise BadRequest(
                    f"{label} {value} must be a multiple of {SIZE_MULTIPLE} in 32..{MAX_INPUT_SIDE_PX}",
                    field=f"config.{label}",
                )
        if not 0 <= req.epochs <= MAX_EPOCHS:
            raise BadRequest(
                f"epochs {req.epochs} must be in 0..{MAX_EPOCHS} (0: the recipe's default)", field="config.epochs"
            )
        if req.batch_size < 0 or req.batch_size > 1024:
            raise BadRequest(
                f"batch_size {req.batch_size} must be in 1..1024 (0: the recipe's default)", field="config.batch_size"
            )
        if not 0 <= req.learning_rate < 1:
            raise BadRequest(
                f"learning_rate {req.learning_rate} must be in [0, 1) (0: the recipe's default)",
                field="config.learning_rate",
            )
        if not 1 <= req.workers <= self.max_workers:
            raise BadRequest(
                f"workers {req.workers} must be in 1..{self.max_workers} (setting max_workers)", field="workers"
            )
        if req.max_duration_s < 0:
            raise BadRequest("max_duration_s must be >= 0 (0: no limit)", field="config.max_duration_s")
        if req.precision and req.precision not in EXPORT_PRECISIONS:
            raise BadRequest(
                f"precision {req.precision!r} must be one of {', '.join(EXPORT_PRECISIONS)}", field="config.precision"
            )
        if len(set(req.classes)) != len(req.classes) or any(not c.strip() for c in req.classes):
            raise BadRequest(f"classes must be unique and non-empty, got {list(req.classes)}", field="config.classes")
        if set(req.classes) & set(req.ignore_classes):
            raise BadRequest(
                f"classes {sorted(set(req.classes) & set(req.ignore_classes))} are also ignore_classes",
                field="config.ignore_classes",
            )
        if not looks_like_folder(req.dataset):
            parse_ref(req.dataset)

    @property
    def roots(self) -> AllowedRoots:
        return AllowedRoots.of(self.allowed_roots, "trainer", ROOTS_SETTING)

    def folder(self, text: str) -> Path:
        """A local data set folder, resolved; refused outside the roots before its existence is checked."""
        folder = self.roots.resolve(text, "data set folder", field="dataset")
        if not folder.is_dir():
            raise DatasetNotFound(f"data set folder {text!r} does not exist on the trainer")
        return folder

    def checkpoint(self, text: str) -> Path:
        """An init checkpoint file, resolved, under the same roots as data set folders."""
        path = self.roots.resolve(text, "init checkpoint", field="config.init_checkpoint")
        if not path.is_file():
            raise BadRequest(f"init checkpoint {text!r} is not a file on the trainer", field="config.init_checkpoint")
        return path

    async def check_snapshot(self, req: TrainRequest) -> None:
        """Fails fast (NOT_FOUND) on a snapshot that does not exist."""
        if not looks_like_folder(req.dataset):
            await resolve(self.feature_addr, parse_ref(req.dataset), tls=self.mesh_tls)

    async def prepare(
        self, job_id: str, req: TrainRequest, on_fetch: Callable[[int, int], Awaitable[None]] | None = None
    ) -> JobSpec:
        """The job's spec, after downloading its snapshot (``on_fetch`` gets frames written, frames in all)."""
        if looks_like_folder(req.dataset):
            folder = self.folder(req.dataset)
            dataset, data_path, fmt = str(folder), folder, ""
        else:
            ref: SnapshotRef = parse_ref(req.dataset)
            cached = await materialize(self.feature_addr, ref, self.cache_dir, on_fetch, tls=self.mesh_tls)
            dataset, data_path, fmt = f"{cached.ref.name}:{cached.ref.version}", cached.path, "coco"
        recipe = recipe_overrides(req)
        cores = self.cpu_threads or os.cpu_count() or 1
        return JobSpec(
            job_id=job_id,
            dataset=dataset,
            data_path=str(data_path),
            data_format=fmt,
            model={
                "preset": req.preset,
                "class_names": list(req.classes),
                "input_width": req.input_width or DEFAULT_INPUT_WIDTH,
                "input_height": req.input_height or DEFAULT_INPUT_HEIGHT,
            },
            ignore_classes=list(req.ignore_classes),
            recipe=recipe,
            # The checked, resolved file: the worker must not follow a link swapped in later.
            init_checkpoint=str(self.checkpoint(req.init_checkpoint)) if req.init_checkpoint else "",
            max_duration_s=float(req.max_duration_s),
            deadline_unix=time.time() + req.max_duration_s if req.max_duration_s else 0.0,
            workers=req.workers,
            # Workers share the cores: oversubscribed thread pools cost more than they give.
            threads_per_worker=max(1, cores // req.workers),
            export_precision=req.precision or DEFAULT_EXPORT_PRECISION,
            **{**self.defaults, **({"model_name": req.model_name} if req.model_name else {})},
        )


def recipe_overrides(req: TrainRequest) -> dict[str, Any]:
    """The Recipe fields a request sets, here and in a TFJob: what it names, and the schedule."""
    recipe: dict[str, Any] = {}
    for key, value in (
        ("epochs", req.epochs),
        ("batch_size", req.batch_size),
        ("learning_rate", req.learning_rate),
        ("crop_width", req.crop_width),
        ("crop_height", req.crop_height),
        ("seed", req.seed),
    ):
        if value:
            recipe[key] = value
    if req.max_duration_s:
        # The schedule anneals to end on time (worker start-up and data loading come first); the
        # job's deadline is the hard stop. Epochs then only cap it, unless the request set them.
        recipe["time_budget_s"] = max(1.0, req.max_duration_s - STARTUP_ALLOWANCE_S)
        recipe.setdefault("epochs", MAX_EPOCHS)
        if recipe["time_budget_s"] <= SHORT_BUDGET_S:
            for key, value in SHORT_SCHEDULE.items():
                recipe.setdefault(key, value)
    elif req.epochs:
        # Epochs asked for and no time limit: run them all, scheduled by steps. The recipe's own
        # time budget belongs to its default job (no epochs, no limit).
        recipe["time_budget_s"] = None
    return recipe
