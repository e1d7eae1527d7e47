"""What the chief does after training: evaluate on the validation split, export ONNX (checked
against Keras), draw the results, log it all to the job's MLflow run, register a version of the
model in the carmesh tag schema, and point the ``challenger`` alias at it through
registry_gateway (which keeps the alias history that rollback uses).

:func:`prepare_release` does everything that can be undone or repeated; :func:`register` is the
step that cannot, run by the worker under the job's commit lock (``trainer.jobspec``)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np

from carmesh.v1 import registry_pb2, registry_pb2_grpc
from kit.letterbox import letterbox
from kit.mesh_tls import MeshTls, mesh_channel_sync
from kit.registry_tags import (
    MANIFEST_FILE,
    MODEL_ARTIFACT_DIR,
    ONNX_FILE,
    TAG_EVAL,
    TAG_JOB_ID,
    TAG_PRECISION,
    TAG_TRAIN_DATASET,
    TRITON_CONFIG_FILE,
    EvalKey,
    VersionTags,
    merged_eval_tag,
)
from trainer.data import TrainingData
from trainer.evaluate import TALL_MIN_HEIGHT_PX
from trainer.evaluation import Report
from trainer.events import ResultEvent
from trainer.jobspec import JobSpec
from trainer.modelspec import ModelSpec
from trainer.phases import JobPhase
from trainer.predict import ImageDetections, evaluate_detections, ground_truth, onnx_forward, predict_with
from trainer.tracking import Tracker
from trainer_worker import plots
from trainer_worker.export import check_parity, export_onnx, triton_config
from trainer_worker.predict import predict
from trainer_worker.quantize import INT8, quantize_int8

log = logging.getLogger(__name__)

SAMPLE_IMAGES = 6
# With an int8 export, the float32 file the int8 one was made from (for GPUs, or to quantize again).
FLOAT32_ARTIFACT_DIR = "model-float32"


def _num(value: float) -> float:
    return 0.0 if math.isnan(value) else float(value)


def final_metrics(report: Any, tall: Any, class_names: tuple[str, ...]) -> dict[str, float]:
    metrics = {
        "val_map50": _num(report.map50),
        "val_map50_95": _num(report.map50_95),
        "val_map50_tall": _num(tall.map50),
        "val_map50_95_tall": _num(tall.map50_95),
    }
    for name, ap50, ap in zip(class_names, report.ap50, report.ap.mean(axis=1), strict=True):
        metrics[f"val_ap50.{name}"] = _num(float(ap50))
        metrics[f"val_ap50_95.{name}"] = _num(float(ap))
    return metrics


@dataclass(frozen=True)
class Release:
    """An exported, evaluated model logged to the job's run: what registering it needs."""

    metrics: dict[str, float]
    tags: dict[str, str]
    description: str
    onnx_sha256: str
    parity: str


def prepare_release(
    spec: JobSpec,
    out_dir: Path,
    model_spec: ModelSpec,
    data: TrainingData,
    result: Any,
    tracker: Tracker,
    phase: Callable[[JobPhase], None],
) -> Release:
    """Evaluates, exports and draws the trained model and logs it all to the run. ``phase`` is told each
    phase as it starts (and may raise to stop there)."""
    body = result.body
    model_dir = out_dir / MODEL_ARTIFACT_DIR
    plots_dir = out_dir / "plots"
    model_dir.mkdir(parents=True, exist_ok=True)
    plots_dir.mkdir(parents=True, exist_ok=True)

    def score(detections: list[ImageDetections]) -> tuple[Report, dict[str, float]]:
        report = evaluate_detections(detections, data.val, model_spec.num_classes)
        tall = evaluate_detections(detections, data.val, model_spec.num_classes, min_height_px=TALL_MIN_HEIGHT_PX)
        return report, final_metrics(report, tall, model_spec.class_names)

    phase(JobPhase.EVALUATING)
    val_paths = [im.path for im in data.val]
    detections = predict(body, model_spec, val_paths)
    report, metrics = score(detections)
    log.info("validation (float32): %s", json.dumps(metrics))

    phase(JobPhase.EXPORTING)
    int8 = spec.export_precision == INT8
    float_dir = out_dir / FLOAT32_ARTIFACT_DIR
    if int8:
        float_dir.mkdir(parents=True, exist_ok=True)
    info = export_onnx(body, model_spec, (float_dir if int8 else model_dir) / ONNX_FILE)
    frames = []
    for im in data.val[:2]:
        bgr: Any = cv2.imread(str(im.path), cv2.IMREAD_COLOR)
        canvas = letterbox(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), model_spec.input_hw)[0]
        frames.append(canvas.transpose(2, 0, 1).astype(np.float32) / 255.0)
    parity = check_parity(body, model_spec, info.path, np.stack(frames) if frames else None)
    log.info("export parity: %s", parity.describe())
    if not parity.ok:
        raise RuntimeError(f"the exported ONNX does not match Keras: {parity.describe()}")
    served_sha256, served_size = info.sha256, info.size_bytes
    if int8:
        quantized = quantize_int8(info.path, model_dir / ONNX_FILE, [im.path for im in data.train])
        served_sha256, served_size = quantized.sha256, quantized.size_bytes
        log.info(
            "int8 export: %s (%d bytes, calibrated on %d training frames; %d head nodes kept float32)",
            quantized.path.name,
            quantized.size_bytes,
            quantized.calibration_frames,
            quantized.float_tail_nodes,
        )
        # The served file is the int8 one: its own detections are what the registry's scores describe.
        float_metrics = metrics
        detections = predict_with(onnx_forward(quantized.path), model_spec, val_paths)
        report, metrics = score(detections)
        metrics.update({f"float32_{key}": value for key, value in float_metrics.items()})
        log.info("validation (int8, served): %s", json.dumps(metrics))
    tracker.log_metrics(metrics, step=result.epochs_completed)
    (model_dir / TRITON_CONFIG_FILE).write_text(triton_config(model_spec, spec.model_name))
    (model_dir / MANIFEST_FILE).write_text(
        json.dumps(
            {
                "family": "yolov8",
                "class_names": list(model_spec.class_names),
                "input_width": model_spec.input_width,
                "input_height": model_spec.input_height,
                "sha256": served_sha256,
                "size_bytes": served_size,
                "precision": spec.export_precision,
                "onnx_path": ONNX_FILE,
                "inputs": [
                    {
                        "name": "images",
                        "type": "tensor(float)",
                        "shape": ["batch", 3, model_spec.input_height, model_spec.input_width],
                    }
                ],
                "outputs": [
                    {
                        "name": "output0",
                        "type": "tensor(float)",
                        "shape": ["batch", 4 + model_spec.num_classes, model_spec.anchors()],
                    }
                ],
                "file_name": ONNX_FILE,
                "preset": model_spec.preset,
                "trained_on": spec.dataset,
                "job_id": spec.job_id,
            },
            indent=2,
        )
        + "\n"
    )
    keras_dir = out_dir / "keras"
    keras_dir.mkdir(exist_ok=True)
    body.save(str(keras_dir / "body.keras"))
    (out_dir / "parity.json").write_text(
        json.dumps(
            {
                "images": parity.num_images,
                "head_max_abs": parity.head_max_abs,
                "head_max_value": parity.head_max_value,
                "head_max_rel": parity.head_max_rel,
                "score_max_abs": parity.score_max_abs,
                "box_max_abs_px": parity.box_max_abs,
                "box_max_rel_input": parity.box_max_rel_input,
                "box_allowance_px": parity.box_allowance_px,
                "ok": parity.ok,
                "described": parity.describe(),
            },
            indent=2,
        )
    )

    plots.pr_curve_png(report, model_spec.class_names, plots_dir / "pr_curve.png")
    if result.history:  # empty when a time limit ended training inside the first epoch
        plots.training_curves_png(result.history, plots_dir / "training_curves.png")
    samples: list[Any] = [  # (frame, ImageDetections, GroundTruth): plots.Sample
        (im.path, det, ground_truth(im, model_spec.num_classes))
        for im, det in list(zip(data.val, detections, strict=True))[:SAMPLE_IMAGES]
    ]
    if samples:
        plots.sample_predictions_jpg(samples, model_spec.class_names, plots_dir / "sample_predictions.jpg")

    phase(JobPhase.REGISTERING)
    tracker.log_artifacts(model_dir, MODEL_ARTIFACT_DIR)
    if int8:
        tracker.log_artifacts(float_dir, FLOAT32_ARTIFACT_DIR)
    tracker.log_artifacts(keras_dir, "keras")
    tracker.log_artifacts(plots_dir, "plots")
    tracker.log_artifact(out_dir / "parity.json")
    scored = {
        "map50": metrics["val_map50"],
        "map50_95": metrics["val_map50_95"],
        "map50_tall": metrics["val_map50_tall"],
        "images": float(len(data.val)),
    }
    tags = VersionTags(
        "yolov8", model_spec.class_names, model_spec.input_width, model_spec.input_height, served_sha256, served_size
    ).tags()
    key = EvalKey.of(spec.dataset, model_spec.class_names, spec.ignore_classes).key
    tags.update({TAG_TRAIN_DATASET: spec.dataset, TAG_JOB_ID: spec.job_id, TAG_PRECISION: spec.export_precision})
    tags[TAG_EVAL] = merged_eval_tag(None, key, scored)
    description = (
        f"trained by {spec.job_id} on {spec.dataset}: val mAP50 {metrics['val_map50']:.3f} "
        f"({metrics['val_map50_tall']:.3f} for objects >= {TALL_MIN_HEIGHT_PX:.0f} px tall)"
    )
    description += f", {spec.export_precision}"
    return Release(metrics, tags, description, served_sha256, parity.describe())


def register(spec: JobSpec, release: Release, tracker: Tracker) -> ResultEvent:
    """Registers the released model as a new version and points the challenger alias at it."""
    version = tracker.register(spec.model_name, release.tags, release.description)
    alias = ""
    if spec.registry_addr:
        alias = set_alias(spec.registry_addr, spec.model_name, spec.challenger_alias, version, spec.mesh_files)
    return ResultEvent(
        model_name=spec.model_name,
        version=version,
        alias=alias,
        metrics=release.metrics,
        mlflow_run_id=tracker.run_id,
        onnx_sha256=release.onnx_sha256,
        parity=release.parity,
    )


SET_ALIAS_ATTEMPTS = 4
SET_ALIAS_TIMEOUT_S = 30.0


def set_alias(registry_addr: str, model_name: str, alias: str, version: str, mesh_files: Sequence[str] = ()) -> str:
    """Through registry_gateway so the alias history (rollback) records the move; over mutual TLS with
    the trainer's certificate when ``mesh_files`` (CA, certificate, key) are given."""
    tls = MeshTls(*(Path(path).read_bytes() for path in mesh_files)) if mesh_files else None
    request = registry_pb2.SetAliasRequest(name=model_name, alias=alias, version=version)
    with mesh_channel_sync(registry_addr, tls) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        # Setting an alias to a version is idempotent, so a registry that is slow (a loaded host: the
        # demo job once failed on one 30 s deadline) or restarting is tried again before the job fails.
        for attempt in range(1, SET_ALIAS_ATTEMPTS + 1):
            try:
                stub.SetAlias(request, timeout=SET_ALIAS_TIMEOUT_S, wait_for_ready=True)
                return alias
            except grpc.RpcError as error:
                code = error.code() if isinstance(error, grpc.Call) else None
                if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                if attempt == SET_ALIAS_ATTEMPTS:
                    raise RuntimeError(
                        f"the registry at {registry_addr} did not set {model_name}@{alias} -> version {version} "
                        f"in {SET_ALIAS_ATTEMPTS} tries of {SET_ALIAS_TIMEOUT_S:.0f}s "
                        f"({code.name}: {error.details()}); "
                        f"the version is registered: `carmesh models promote` or SetAlias can point the alias at it"
                    ) from None
                log.warning(
                    "SetAlias %s@%s: %s; again (%d/%d)", model_name, alias, code.name, attempt, SET_ALIAS_ATTEMPTS
                )
                time.sleep(2.0 * attempt)
    return alias
