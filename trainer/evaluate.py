"""EvaluateModel: a registered model's COCO-style AP on a data set's validation split, run in
ONNX Runtime exactly as the detector would run it, recorded on the version (``carmesh.eval``)
so the promotion gate compares challenger and champion on the same data."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from carmesh.v1 import registry_pb2, registry_pb2_grpc
from kit import mlflow_auth
from kit.mesh_tls import MeshTls, mesh_channel
from kit.server import channel_options
from trainer.errors import BadRequest, NotEvaluable, UpstreamUnavailable

# The same 40 px cut the project reports next to "all cars" (small distant cars are loosely labelled).
TALL_MIN_HEIGHT_PX = 40.0


@dataclass(frozen=True)
class EvaluateRequest:
    model_name: str
    version: str
    alias: str
    dataset: str
    classes: tuple[str, ...] = ()
    ignore_classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvaluateResult:
    model_name: str
    version: str
    dataset: str
    classes: tuple[str, ...]
    map50: float
    map50_95: float
    ap50: dict[str, float] = field(default_factory=dict)
    images: int = 0


@dataclass(frozen=True)
class DownloadedModel:
    name: str
    version: str
    family: str
    class_names: tuple[str, ...]
    input_width: int
    input_height: int
    path: Path


async def download(
    registry_addr: str, name: str, version: str, alias: str, cache_dir: Path, tls: MeshTls | None = None
) -> DownloadedModel:
    """The version's ONNX from registry_gateway (which verifies its sha256), cached by sha256."""
    await asyncio.to_thread(cache_dir.mkdir, parents=True, exist_ok=True)
    async with mesh_channel(registry_addr, tls, channel_options(64 * 1024 * 1024)) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        info: registry_pb2.ModelVersion | None = None
        chunks: list[bytes] = []
        try:
            request = registry_pb2.DownloadModelRequest(name=name)
            # version and alias are a oneof: set only the one given.
            if version:
                request.version = version
            else:
                request.alias = alias
            async for reply in stub.DownloadModel(request):
                if reply.HasField("version"):
                    info = reply.version
                    cached = cache_dir / f"{info.sha256}.onnx"
                    if info.sha256 and await asyncio.to_thread(cached.is_file):
                        break
                else:
                    chunks.append(reply.chunk)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise BadRequest(exc.details() or "unknown model") from exc
            raise UpstreamUnavailable(
                f"registry_gateway at {registry_addr}: {exc.code().name}: {exc.details()}"
            ) from exc
    if info is None:
        raise UpstreamUnavailable(f"registry_gateway at {registry_addr} sent no version for {name}")
    path = cache_dir / f"{info.sha256}.onnx"
    if chunks:
        await asyncio.to_thread(_write_atomically, path, b"".join(chunks))
    family = registry_pb2.ModelFamily.Name(info.family).removeprefix("MODEL_FAMILY_").lower()
    return DownloadedModel(
        info.name, info.version, family, tuple(info.class_names), info.input_width, info.input_height, path
    )


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(path)


def evaluate_onnx(
    model: DownloadedModel,
    data_path: Path,
    data_format: str | None,
    classes: tuple[str, ...],
    ignore_classes: tuple[str, ...],
) -> tuple[tuple[str, ...], dict[str, float], int]:
    """Scores ``classes`` (default: the model's classes the data has) on the validation split."""
    from trainer.data import load_folder
    from trainer.modelspec import ModelSpec
    from trainer.predict import evaluate_detections, onnx_forward, predict_with

    if model.family != "yolov8":
        raise NotEvaluable(
            f"{model.name} v{model.version} is family {model.family}: EvaluateModel runs the YOLOv8 layout "
            "(what the trainer exports); compare other families with `make bench-accuracy`"
        )
    data = load_folder(data_path, classes=None, ignore_classes=list(ignore_classes), fmt=data_format)
    wanted = classes or tuple(c for c in model.class_names if c in data.class_names)
    missing = [c for c in wanted if c not in model.class_names or c not in data.class_names]
    if not wanted or missing:
        raise NotEvaluable(
            f"no classes to score: model has {list(model.class_names)}, data set has {list(data.class_names)}"
            + (f"; missing {missing}" if missing else "")
        )
    if not data.val:
        raise NotEvaluable(f"data set {data_path} has no validation images")
    # Ground truth in the model's class order; the data set's other classes are not scored.
    data = load_folder(data_path, classes=list(wanted), ignore_classes=list(ignore_classes), fmt=data_format)
    model_index = [model.class_names.index(c) for c in wanted]
    served = onnx_forward(model.path)

    def forward(nhwc: np.ndarray) -> np.ndarray:
        out = served(nhwc)
        # Keep the box rows and the scored classes' rows, in the ground truth's order.
        return np.concatenate([out[:, :4], out[:, [4 + i for i in model_index]]], axis=1)

    spec = ModelSpec("n", tuple(wanted), model.input_width, model.input_height)
    detections = predict_with(forward, spec, [im.path for im in data.val])
    report = evaluate_detections(detections, data.val, len(wanted))
    tall = evaluate_detections(detections, data.val, len(wanted), min_height_px=TALL_MIN_HEIGHT_PX)
    metrics = {"map50": _num(report.map50), "map50_95": _num(report.map50_95), "map50_tall": _num(tall.map50)}
    for name, ap in zip(wanted, report.ap50, strict=True):
        metrics[f"ap50.{name}"] = _num(float(ap))
    return tuple(wanted), metrics, len(data.val)


def _num(value: float) -> float:
    return 0.0 if math.isnan(value) else float(value)


class Evaluator:
    def __init__(
        self,
        registry_addr: str,
        mlflow_tracking_uri: str,
        model_cache: Path,
        resolve_data: Callable[[str], Awaitable[tuple[str, Path, str]]],
        tls: MeshTls | None = None,
        mlflow_username: str = "",
    ) -> None:
        self._registry_addr = registry_addr
        self._mlflow_username = mlflow_username
        self._tls = tls
        self._mlflow = mlflow_tracking_uri
        self._cache = model_cache
        self._resolve_data = resolve_data
        # One evaluation at a time: it takes the cores training would use.
        self._lock = asyncio.Lock()

    async def __call__(self, req: EvaluateRequest) -> EvaluateResult:
        from kit.registry_tags import EvalKey
        from trainer.tracking import record_evaluation

        dataset, data_path, fmt = await self._resolve_data(req.dataset)
        model = await download(self._registry_addr, req.model_name, req.version, req.alias, self._cache, self._tls)
        async with self._lock:
            classes, metrics, images = await asyncio.to_thread(
                evaluate_onnx, model, data_path, fmt or None, req.classes, req.ignore_classes
            )
        result: dict[str, Any] = {**metrics, "images": images}
        key = EvalKey.of(dataset, classes, req.ignore_classes).key
        try:
            await asyncio.to_thread(record_evaluation, self._mlflow, model.name, model.version, key, result)
        except Exception as exc:  # the numbers are still worth returning
            if mlflow_auth.refused(exc):
                hint = mlflow_auth.refused_hint(self._mlflow, self._mlflow_username)
                raise UpstreamUnavailable(f"evaluated, but {hint}") from exc
            raise UpstreamUnavailable(f"evaluated, but MLflow at {self._mlflow} refused the tag: {exc}") from exc
        return EvaluateResult(
            model_name=model.name,
            version=model.version,
            dataset=dataset,
            classes=classes,
            map50=metrics["map50"],
            map50_95=metrics["map50_95"],
            ap50={k.removeprefix("ap50."): v for k, v in metrics.items() if k.startswith("ap50.")},
            images=images,
        )


def eval_summary(tag_value: str, key: str) -> dict[str, float] | None:
    try:
        found = json.loads(tag_value).get(key)
    except (json.JSONDecodeError, AttributeError):
        return None
    return found if isinstance(found, dict) else None
