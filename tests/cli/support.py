"""Helpers for the CLI tests (and the trainer's, which drive it too): run ``carmesh`` as a
user does, and a constant-output model to serve."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO_ROOT
from tests.onnx_factory import write_yolov8_model, yolov8_raw


def carmesh(*args: str, gateway: str, api_key: str | None, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CARMESH_GATEWAY", "CARMESH_API_KEY")}
    env["CARMESH_PLAINTEXT"] = "1"  # the tests' gateways serve plaintext (tests/security covers TLS)
    env["CARMESH_GATEWAY"] = gateway
    if api_key is not None:
        env["CARMESH_API_KEY"] = api_key
    return subprocess.run(
        [sys.executable, "-m", "carmesh_cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=timeout_s,
        check=False,
    )


def constant_model(path: Path, score: float = 0.9, anchors: int | None = None) -> Path:
    """Two boxes (car, truck) at 64x64; ``anchors`` > 6 pads zero-score anchors so that the registry
    can tell the YOLOv8 layout ([N,4+nc,A] with 4+nc < A) without --family."""
    raw = yolov8_raw([(32, 32, 20, 20), (16, 16, 8, 8)], [[score, 0.05], [0.1, 0.6]], anchors=anchors)
    return write_yolov8_model(path, raw, (64, 64), ["car", "truck"])
