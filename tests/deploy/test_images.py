"""The gateway and detector images, built and run for real (``make image-check``).

Both are built with buildah from their Dockerfiles on a Debian base made here by debootstrap
(no registry is reachable to pull ``python:3.11-slim-bookworm``); each daemon then runs its
image's ENTRYPOINT in a container (``buildah run``, chroot isolation, the host's network): the
detector serves a real ONNX model and the gateway, in its own container, forwards a Detect to it
with an API key. The base image is built once and reused, and buildah's layer cache makes a
repeated build take seconds (docs/deploy.md has the times measured here).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from pydantic import BaseModel

from carmesh.v1 import detector_pb2, detector_pb2_grpc
from detector.config import Settings as DetectorSettings
from devstack.images import BY_NAME, LOCAL_BASE, ImageError, build, ensure_local_base, image_config, project_version
from gateway.config import Settings as GatewaySettings
from tests.deploy.images_support import ImageDaemon, all_containers, leftover_containers
from tests.detector.support import jpeg_bytes
from tests.helpers import free_port
from tests.onnx_factory import write_yolov8_model, yolov8_raw
from tests.support import eventually


def _missing() -> str | None:
    for tool in ("buildah", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed: `make setup` installs buildah, podman and debootstrap"
    if os.geteuid() != 0:
        return "debootstrap (the local base image) and buildah's chroot isolation need root"
    return None


pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(_missing() is not None, reason=str(_missing())),
    # A cold run builds the base and both images (about 3 min here); a cached one takes seconds.
    pytest.mark.timeout(1200),
]

# Tags of their own, so the tests never replace what `make images` built.
TEST_PREFIX = "localhost/carmesh-test"
DETECT_KEY = "image-test-detect-key-0123456789"


@dataclass(frozen=True)
class Images:
    gateway: str
    detector: str


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    log = tmp_path_factory.mktemp("images") / "build.log"
    seconds: dict[str, float] = {}
    try:
        started = time.monotonic()
        if ensure_local_base(log=log):
            seconds["base"] = time.monotonic() - started
        built = {
            name: build(BY_NAME[name], engine="buildah", base=LOCAL_BASE, prefix=TEST_PREFIX, log=log)
            for name in ("gateway", "detector")
        }
    except ImageError as exc:
        pytest.fail(f"{exc}\n{log.read_text(errors='replace')[-6000:] if log.exists() else ''}")
    seconds |= {name: b.seconds for name, b in built.items()}
    print("image builds (s):", {name: round(value, 1) for name, value in seconds.items()})
    yield Images(gateway=built["gateway"].tag, detector=built["detector"].tag)
    assert leftover_containers() == []


def plaintext_flags(settings: type[BaseModel]) -> list[str]:
    """``--mesh-plaintext`` / ``--public-plaintext`` where the daemon has them (TLS by default then)."""
    names = ("mesh_plaintext", "public_plaintext")
    return [f"--{name.replace('_', '-')}" for name in names if name in settings.model_fields]


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """The folder a container sees as /srv/test; the daemons (uid 10001) write their ready files there."""
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    return folder


def test_images_are_versioned_and_run_as_a_user_their_daemon(images: Images) -> None:
    version = project_version()
    for tag, module in ((images.gateway, "gateway"), (images.detector, "detector")):
        assert tag.endswith(f":{version}") and "latest" not in tag
        config = image_config(tag)
        labels = config["Labels"]
        assert isinstance(labels, dict)
        assert labels["org.opencontainers.image.version"] == version
        assert labels["org.opencontainers.image.title"] == f"carmesh-{module}"
        assert config["User"] == "10001:10001"
        assert config["Entrypoint"] == ["python", "-m", module]
        assert config["WorkingDir"] == "/var/lib/carmesh" and "/var/lib/carmesh" in config["Volumes"]  # type: ignore[operator]


def test_gateway_image_forwards_detect_to_the_detector_image(images: Images, shared: Path) -> None:
    raw = yolov8_raw([(32, 32, 20, 10)], [[0.1, 0.9]], anchors=4)
    write_yolov8_model(shared / "m.onnx", raw, (64, 64), names=["car", "truck"]).chmod(0o644)
    image = jpeg_bytes(np.zeros((64, 64, 3), np.uint8))
    detector_args = ["--model-path", "/srv/test/m.onnx", "--max-batch-size", "2", *plaintext_flags(DetectorSettings)]
    with ImageDaemon(images.detector, detector_args, shared) as detector:
        assert detector.uid() == 10001
        with grpc.insecure_channel(detector.address) as channel:
            direct = detector_pb2_grpc.DetectorServiceStub(channel).Detect(
                detector_pb2.DetectRequest(image=image), timeout=10
            )
        assert [(d.class_name, round(d.box.x1), round(d.box.y2)) for d in direct.detections] == [("truck", 22, 37)]

        gateway_args = [
            *("--api-keys", f"{DETECT_KEY}:camera:detect", "--detector-addrs", detector.address),
            *("--registry-addr", f"127.0.0.1:{free_port()}", "--health-check-interval-s", "0.2"),
            *plaintext_flags(GatewaySettings),
        ]
        with ImageDaemon(images.gateway, gateway_args, shared) as gateway:
            assert gateway.uid() == 10001
            with grpc.insecure_channel(gateway.address) as channel:
                stub = detector_pb2_grpc.DetectorServiceStub(channel)
                request = detector_pb2.DetectRequest(image=image, request_id="through-the-gateway")
                auth = (("authorization", f"Bearer {DETECT_KEY}"),)

                # The gateway routes to the detector once its health check has seen it serve.
                def forwarded() -> detector_pb2.DetectResponse:
                    return stub.Detect(request, metadata=auth, timeout=10)

                reply = eventually(forwarded, what="a Detect through the gateway", retry_on=(grpc.RpcError,))
                assert [(d.class_name, round(d.box.x1), round(d.box.y2)) for d in reply.detections] == [
                    ("truck", 22, 37)
                ]
                assert reply.model.name == "m" and reply.request_id == "through-the-gateway"
                with pytest.raises(grpc.RpcError) as err:
                    stub.Detect(request, timeout=10)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

            assert gateway.terminate() == 0
            assert '"msg": "stopped"' in gateway.log()
            assert gateway.written_outside_volumes() == []

        assert detector.terminate() == 0
        assert '"msg": "stopped"' in detector.log()
        # A read-only root filesystem would have refused every one of these writes.
        assert detector.written_outside_volumes() == []
    assert leftover_containers() == []


def test_a_daemon_that_cannot_start_reports_why_and_leaves_no_container(images: Images, shared: Path) -> None:
    daemon = ImageDaemon(images.detector, ["--model-path", "/srv/test/missing.onnx"], shared)
    with pytest.raises(RuntimeError, match="exited with"):
        daemon.start()
    assert "model_path" in daemon.log() and "missing.onnx" in daemon.log()
    assert leftover_containers() == []


def test_a_version_other_than_pyprojects_fails_the_build(images: Images, tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    before = all_containers()
    with pytest.raises(ImageError, match="failed"):
        build(BY_NAME["gateway"], engine="buildah", base=LOCAL_BASE, version="0.0.0", prefix=TEST_PREFIX, log=log)
    assert "VERSION=0.0.0 is not pyproject.toml's version" in log.read_text()
    assert all_containers() - before == set()  # the failed step's working container is gone too
