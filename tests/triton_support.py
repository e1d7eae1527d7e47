"""A real Triton server for tests: pytriton's tritonserver, started from the separate ``.venv-triton``
(pytriton needs numpy<2), serving ONNX files through ONNX Runtime (devstack/pytriton_server.py)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from devstack.pytriton_server import TRITON_PYTHON, launched


def triton_python() -> Path:
    """The interpreter of ``.venv-triton``; CI must have it (``make setup``), a laptop may skip."""
    if not TRITON_PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{TRITON_PYTHON} is missing: `make setup` creates it")
        pytest.skip(f"{TRITON_PYTHON} missing: run `make setup`")
    return TRITON_PYTHON


@contextlib.contextmanager
def pytriton_server(models: Mapping[str, Path], *, max_batch_size: int = 8) -> Iterator[str]:
    """Serves ``{"NAME" or "NAME:VERSION": onnx_file}``; yields the gRPC address once all are ready."""
    with launched(models, python=triton_python(), max_batch_size=max_batch_size) as url:
        yield url
