"""Helpers for the detector tests: COCO names, KITTI labels, IoU, an in-process detector."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from prometheus_client import CollectorRegistry

from carmesh.v1 import detector_pb2_grpc
from carmesh_cli.names import PRESETS
from detector.app import DAEMON
from detector.config import Settings
from detector.models import ModelManager
from kit.daemon import running as daemon_running
from kit.server import Server

# The CLI's preset is the one users get; tests use the same list.
COCO80 = list(PRESETS["coco"])
assert len(COCO80) == 80 and COCO80[2] == "car"


def kitti_boxes(label_file: Path, cls: str) -> list[tuple[float, float, float, float]]:
    boxes = []
    for line in label_file.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == cls:
            x1, y1, x2, y2 = (float(v) for v in parts[4:8])
            boxes.append((x1, y1, x2, y2))
    return boxes


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_of(detection: Any) -> tuple[float, float, float, float]:
    return (detection.box.x1, detection.box.y1, detection.box.x2, detection.box.y2)


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"grpc_port": 0, "metrics": False, "max_wait_ms": 2.0, "mesh_plaintext": True}
    values.update(overrides)
    return Settings.model_validate(values)


@dataclass(frozen=True)
class InProcess:
    """The parts of an in-process detector that tests reach into."""

    server: Server
    manager: ModelManager
    inference_executor: Executor
    registry: CollectorRegistry


@contextlib.asynccontextmanager
async def running(cfg: Settings) -> AsyncIterator[tuple[InProcess, detector_pb2_grpc.DetectorServiceStub]]:
    """The whole daemon in this process on a free port (the kit skeleton, as ``python -m detector``
    runs it), and a stub talking to it over gRPC; leaving the block drains and closes it."""
    async with daemon_running(DAEMON, cfg) as started:
        daemon = started.daemon
        app = InProcess(started.server, daemon.manager, daemon.inference_executor, started.metrics.registry)
        async with grpc.aio.insecure_channel(started.grpc_address) as channel:
            yield app, detector_pb2_grpc.DetectorServiceStub(channel)


def jpeg_bytes(image: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes()
