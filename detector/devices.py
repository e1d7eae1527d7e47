"""Where ONNX Runtime runs the model: ``--device auto|cpu|cuda|tensorrt``.

``cuda`` and ``tensorrt`` are promises: when this onnxruntime build lacks the provider, or the NVIDIA
driver reports no device, the detector does not start (exit 2, saying which and how to fix it), and a
session that still ends up without the provider (CUDA runtime or cuDNN libraries missing: ONNX Runtime
then falls back to CPU with only a log line) fails the model load. ``auto`` takes CUDA when both the
build and a device are there, else the CPU, and logs which and why. TensorRT is never chosen by
``auto``: it builds an engine per input shape at load time, which is a deliberate choice.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

import onnxruntime as ort

from detector.config import Device
from detector.errors import ModelLoadError

log = logging.getLogger(__name__)

DEVICES: tuple[Device, ...] = get_args(Device)
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_EXTRA_HINT = "install the GPU build: pip install 'carmesh[detector-gpu]' (onnxruntime-gpu in place of onnxruntime)"


@dataclass(frozen=True)
class DeviceChoice:
    device: Device
    # ONNX Runtime providers in order of preference (CPU last: it runs what the others cannot).
    providers: tuple[str, ...]
    # The provider every session must really get ("": none required, e.g. auto or cpu).
    required: str
    reason: str


def cuda_device_count() -> tuple[int, str]:
    """How many CUDA devices the NVIDIA driver reports, and, when none, why (asked of libcuda itself:
    onnxruntime-gpu lists its CUDA provider on machines without a GPU too)."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no NVIDIA driver on this machine (libcuda.so.1 not found)"
    status = driver.cuInit(0)
    if status != 0:
        return 0, f"the NVIDIA driver did not initialise (cuInit returned CUDA error {status})"
    count = ctypes.c_int(0)
    status = driver.cuDeviceGetCount(ctypes.byref(count))
    if status != 0:
        return 0, f"the NVIDIA driver could not count devices (CUDA error {status})"
    if count.value < 1:
        return 0, "the NVIDIA driver reports no CUDA device"
    return count.value, ""


def choose_device(device: Device, available: Sequence[str]) -> DeviceChoice:
    """The providers for ``device`` given this build's ``available`` providers; raises :class:`ModelLoadError`
    when ``cuda`` or ``tensorrt`` cannot be had (the caller turns it into a start-up error)."""
    if device not in DEVICES:
        raise ModelLoadError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    if device == "cpu":
        return DeviceChoice(device, (CPU,), "", "asked for (--device cpu)")
    wanted = TENSORRT if device == "tensorrt" else CUDA
    if wanted not in available:
        why = f"this onnxruntime build has no {wanted} (it has {', '.join(available)})"
        if device == "auto":
            return DeviceChoice("cpu", (CPU,), "", f"{why}; for a GPU, {GPU_EXTRA_HINT}")
        raise ModelLoadError(f"--device {device}: {why}; {GPU_EXTRA_HINT}")
    count, no_gpu = cuda_device_count()
    if count == 0:
        if device == "auto":
            return DeviceChoice("cpu", (CPU,), "", f"{CUDA} is built in but {no_gpu}")
        raise ModelLoadError(f"--device {device}: {no_gpu}; use --device cpu or auto on this machine")
    if device == "tensorrt":
        providers: tuple[str, ...] = (TENSORRT, CUDA, CPU) if CUDA in available else (TENSORRT, CPU)
        return DeviceChoice(device, providers, TENSORRT, f"asked for; {count} CUDA device(s)")
    reason = f"{CUDA} is built in and the driver reports {count} CUDA device(s)"
    return DeviceChoice("cuda", (CUDA, CPU), CUDA if device == "cuda" else "", reason)


def device_providers(device: Device) -> DeviceChoice:
    """:func:`choose_device` against this process's onnxruntime build, logged with the reason."""
    choice = choose_device(device, ort.get_available_providers())
    log.info("device %s: running on %s with %s (%s)", device, choice.device, ", ".join(choice.providers), choice.reason)
    return choice


def check_session(required: str, got: Sequence[str], what: str) -> None:
    """Fails a session that did not get the required provider (ONNX Runtime's silent CPU fallback)."""
    if required and required not in got:
        raise ModelLoadError(
            f"{what}: {required} was required but ONNX Runtime gave the session only {', '.join(got)} "
            "(CUDA runtime, cuDNN or TensorRT libraries missing or mismatched? its log above says which); "
            "not falling back to the CPU silently: fix the libraries or use --device cpu"
        )
