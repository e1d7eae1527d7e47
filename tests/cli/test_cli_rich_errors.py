"""Acceptance: the ``carmesh`` CLI (a subprocess, as a user runs it) prints the rich details of a
failed call, read from the grpc-status-details-bin trailer through a real gateway in front of a
real detector: the RetryInfo delay of a rate-limited call, the reason and field of a bad request."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from PIL import Image

from tests.gateway.support import DETECT_KEY, run_gateway
from tests.helpers import REPO_ROOT, DaemonProcess, free_port
from tests.onnx_factory import write_yolov8_model, yolov8_raw

pytest.importorskip("detector.app", reason="the detector daemon is not in this tree")

# Two calls at once, then one per 1000 s: the third call is refused whatever the timing.
BURST = 2
RATE_PER_S = 0.001


def carmesh(*args: str, gateway: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CARMESH_GATEWAY", "CARMESH_API_KEY")}
    env["CARMESH_PLAINTEXT"] = "1"  # the tests' gateways serve plaintext (tests/security covers TLS)
    env.update(CARMESH_GATEWAY=gateway, CARMESH_API_KEY=DETECT_KEY)
    argv = [sys.executable, "-m", "carmesh_cli", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120, check=False)


@pytest.fixture(scope="module")
def limited_gateway(keys_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    raw = yolov8_raw([(32, 32, 20, 20)], [[0.9, 0.05]])
    model = write_yolov8_model(tmp_path_factory.mktemp("models") / "limited.onnx", raw, (64, 64), ["car", "truck"])
    with ExitStack() as stack:
        detector = stack.enter_context(DaemonProcess("detector", ["--model-path", str(model)]))
        limits = ("--rate-limit-rps", str(RATE_PER_S), "--rate-limit-burst", str(BURST))
        gateway = stack.enter_context(run_gateway(keys_file, f"127.0.0.1:{free_port()}", detector.address, *limits))
        yield gateway.address


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    path = tmp_path / "street.png"
    Image.new("RGB", (96, 64), (80, 90, 100)).save(path)
    return path


def test_cli_shows_the_details_of_bad_requests_then_the_retry_delay_of_a_rate_limit(limited_gateway, image, tmp_path):
    # Runs in order against one bucket: two refused-by-the-detector calls use up the burst.
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not an image")
    result = carmesh("detect", str(broken), gateway=limited_gateway)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: INVALID_ARGUMENT: ")
    assert "\n  reason: INVALID_IMAGE\n" in result.stderr and "\n  field image\n" in result.stderr

    result = carmesh("detect", str(image), "--classes", "zebra", gateway=limited_gateway)
    assert result.returncode == 1, result.stderr
    assert "\n  reason: UNKNOWN_CLASS (unknown=zebra)\n" in result.stderr
    assert "\n  field classes\n" in result.stderr

    # The next calls are rate-limited (at most a few more: the bucket may hold a sliver of a token).
    for _ in range(3):
        result = carmesh("detect", str(image), gateway=limited_gateway)
        if result.returncode != 0:
            break
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith("error: RESOURCE_EXHAUSTED: rate limit exceeded for API key 'camera'")
    assert "\n  reason: RATE_LIMITED (api_key=camera, burst=2, rate_per_s=0.001)\n" in result.stderr
    # The delay comes from the RetryInfo detail of the grpc-status-details-bin trailer.
    match = re.search(r"\n  retry after (\d+(?:\.\d+)?) s\n", result.stderr + "\n")
    assert match is not None, result.stderr
    assert 900 < float(match.group(1)) <= 1000
