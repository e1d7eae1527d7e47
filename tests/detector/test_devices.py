"""``--device auto|cpu|cuda|tensorrt``: auto says what it chose and why; cuda and tensorrt that cannot be had
stop the detector at start (exit 2) instead of falling back to the CPU; the GPU extra swaps onnxruntime."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import onnxruntime as ort
import pytest

from detector.devices import CPU, CUDA, TENSORRT, check_session, choose_device, cuda_device_count
from detector.errors import ModelLoadError
from tests.cli.support import constant_model
from tests.helpers import REPO_ROOT, DaemonProcess

HAS_GPU = cuda_device_count()[0] > 0
no_gpu_here = pytest.mark.skipif(HAS_GPU, reason="this machine has a CUDA device")


def _extras() -> dict[str, list[str]]:
    with (REPO_ROOT / "pyproject.toml").open("rb") as handle:
        extras: dict[str, list[str]] = tomllib.load(handle)["project"]["optional-dependencies"]
    return extras


def _names(extra: str, extras: dict[str, list[str]]) -> set[str]:
    """Distribution names an extra installs, following ``carmesh[...]`` references."""
    names: set[str] = set()
    for requirement in extras[extra]:
        name = re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower()
        if name == "carmesh":
            for inner in requirement.split("[", 1)[1].split("]", 1)[0].split(","):
                names |= _names(inner.strip(), extras)
        else:
            names.add(name)
    return names


def test_the_gpu_extra_has_onnxruntime_gpu_instead_of_onnxruntime() -> None:
    extras = _extras()
    gpu, cpu = _names("detector-gpu", extras), _names("detector", extras)
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    assert gpu - {"onnxruntime-gpu"} == cpu - {"onnxruntime"}, "otherwise the same as the detector extra"
    for extra in extras:
        names = _names(extra, extras)
        assert not {"onnxruntime", "onnxruntime-gpu"} <= names, f"extra {extra!r} installs both onnxruntime builds"


def test_cpu_and_auto_on_this_build() -> None:
    available = ort.get_available_providers()
    assert choose_device("cpu", available).providers == (CPU,)
    auto = choose_device("auto", available)
    if CUDA not in available:
        assert auto.device == "cpu" and auto.required == ""
        assert f"no {CUDA}" in auto.reason and "carmesh[detector-gpu]" in auto.reason
        for device in ("cuda", "tensorrt"):
            with pytest.raises(ModelLoadError, match=r"carmesh\[detector-gpu\]"):
                choose_device(device, available)


@no_gpu_here
def test_a_gpu_build_without_a_gpu_is_refused_not_used() -> None:
    # What onnxruntime-gpu lists on a machine without a GPU: the providers are built in, the driver is not there.
    gpu_build = [TENSORRT, CUDA, CPU]
    for device in ("cuda", "tensorrt"):
        with pytest.raises(ModelLoadError, match=r"NVIDIA driver|libcuda"):
            choose_device(device, gpu_build)
    auto = choose_device("auto", gpu_build)
    assert auto.device == "cpu" and auto.providers == (CPU,) and "is built in but" in auto.reason


def test_a_session_without_the_required_provider_fails() -> None:
    check_session("", [CPU], "m.onnx")
    check_session(CUDA, [CUDA, CPU], "m.onnx")
    with pytest.raises(ModelLoadError, match="not falling back to the CPU silently"):
        check_session(CUDA, [CPU], "m.onnx")


def _start(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "detector", "--mesh-plaintext", "--grpc-port", "0", "--metrics-port", "0", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@no_gpu_here
@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_the_detector_does_not_start_on_a_device_it_lacks(device: str, tmp_path: Path) -> None:
    model = constant_model(tmp_path / "m.onnx")
    done = _start(["--model-path", str(model), "--device", device])
    assert done.returncode == 2, done.stderr
    assert f"--device {device}: " in done.stderr


def test_device_and_providers_together_are_refused() -> None:
    done = _start(["--device", "cpu", "--providers", CPU])
    assert done.returncode == 2 and "not both" in done.stderr


def test_auto_logs_its_choice(tmp_path: Path) -> None:
    model = constant_model(tmp_path / "m.onnx")
    with DaemonProcess("detector", ["--model-path", str(model), "--device", "auto"]) as detector:
        log = detector.log()
    chosen = "cuda" if HAS_GPU and CUDA in ort.get_available_providers() else "cpu"
    assert f"device auto: running on {chosen} with " in log, log[-2000:]
