"""The detector with ``--backend triton`` against a real Triton server (pytriton's tritonserver 2.51,
ONNX Runtime inside a Python-backend callable): the same detections as ``--backend onnxruntime`` on
the same apollo-cars images, batches over gRPC and over system shared memory, and clear start-up
errors when Triton cannot serve the model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc

from carmesh.v1 import detector_pb2
from kit.daemon import StartupError
from tests.detector.support import COCO80, box_of, iou, jpeg_bytes, running, settings
from tests.onnx_factory import write_yolov8_model, yolov8_raw
from tests.triton_support import pytriton_server

pytestmark = [pytest.mark.integration]

IMAGES = 8


def yolox_settings(shared_dir: Path, **overrides: object) -> dict[str, object]:
    return {
        "model_path": shared_dir / "models" / "yolox_nano.onnx",
        "model_family": "yolox",
        "class_names": list(COCO80),
        "max_batch_size": 4,
        **overrides,
    }


async def detect_all(
    cfg_values: dict[str, object], images: list[bytes], while_running: Callable[[], object] = lambda: None
) -> list[detector_pb2.DetectResponse]:
    """Each image's reply, sent all at once; checks that the detector says where inference runs.
    ``while_running`` is called after the replies, before the detector stops."""
    async with running(settings(**cfg_values)) as (_, stub):
        requests = [stub.Detect(detector_pb2.DetectRequest(image=image, score_threshold=0.1)) for image in images]
        replies = list(await asyncio.gather(*requests))
        info = await stub.GetModelInfo(detector_pb2.GetModelInfoRequest())
        await asyncio.to_thread(while_running)
    where = list(info.execution_providers)
    if cfg_values.get("backend") == "triton":
        shm = ", system shared memory" if cfg_values.get("triton_shared_memory") else ""
        assert where == [f"triton {cfg_values['triton_url']} {cfg_values['triton_model']} v1{shm}"]
    else:
        assert where == ["CPUExecutionProvider"]
    return replies


def assert_same(expected: detector_pb2.DetectResponse, got: detector_pb2.DetectResponse) -> None:
    assert len(got.detections) == len(expected.detections)
    for want in expected.detections:
        twin = max(got.detections, key=lambda d: iou(box_of(d), box_of(want)) if d.class_id == want.class_id else -1)
        assert twin.class_id == want.class_id and twin.class_name == want.class_name
        assert np.abs(np.subtract(box_of(twin), box_of(want))).max() <= 1.0, (box_of(twin), box_of(want))
        assert abs(twin.score - want.score) <= 1e-3


async def test_triton_backend_matches_onnx_runtime_on_apollo_cars(shared_dir: Path) -> None:
    frames = sorted((shared_dir / "data" / "apollo-cars" / "val" / "images").glob("*.jpg"))[:IMAGES]
    images = [path.read_bytes() for path in frames]
    local = await detect_all(yolox_settings(shared_dir), images)
    assert sum(len(r.detections) for r in local) >= 20  # real cars, not an empty comparison

    with pytriton_server({"yolox-nano": shared_dir / "models" / "yolox_nano.onnx"}) as url:
        triton = {"backend": "triton", "triton_url": url, "triton_model": "yolox-nano", "triton_model_control": "none"}
        over_grpc = await detect_all(yolox_settings(shared_dir, **triton), images)
        over_shm = await detect_all(yolox_settings(shared_dir, **triton, triton_shared_memory=True), images)

    for expected, grpc_reply, shm_reply in zip(local, over_grpc, over_shm, strict=True):
        assert_same(expected, grpc_reply)
        assert_same(expected, shm_reply)
        assert grpc_reply.model == expected.model  # the detector's API says the same model either way


async def test_batches_go_to_triton_through_shared_memory(tmp_path: Path) -> None:
    """A model with a dynamic batch size: concurrent requests share one Triton call, through
    system shared memory regions that are released when the detector stops."""
    raw = yolov8_raw([(32, 32, 20, 10)], [[0.1, 0.9]], anchors=4)
    model = write_yolov8_model(tmp_path / "m.onnx", raw, (64, 64), names=["car", "truck"])
    image = jpeg_bytes(np.zeros((64, 64, 3), np.uint8))
    before = set(Path("/dev/shm").iterdir())
    with pytriton_server({"cars": model}) as url:
        cfg = {
            "model_path": model,
            "backend": "triton",
            "triton_url": url,
            "triton_model": "cars",
            "triton_model_control": "none",
            "triton_shared_memory": True,
            "max_wait_ms": 50.0,
            "inference_threads": 1,
        }

        def triton_regions() -> list[str]:
            status = tritonclient.grpc.InferenceServerClient(url).get_system_shared_memory_status(as_json=True)
            return [region["name"] for region in status.get("regions", {}).values()]

        during: list[str] = []
        replies = await detect_all(cfg, [image] * 8, lambda: during.extend(triton_regions()))
        after = triton_regions()
    # While serving, Triton held the detector's input and output regions; once it stopped, none.
    assert len([name for name in during if name.startswith("carmesh-")]) >= 2, during
    assert not [name for name in after if name.startswith("carmesh-")], after
    assert max(r.timings.batch_size for r in replies) > 1
    for reply in replies:
        assert [(d.class_name, tuple(round(v) for v in box_of(d))) for d in reply.detections] == [
            ("truck", (22, 27, 42, 37))
        ]
        assert reply.detections[0].score == pytest.approx(0.9)
    assert not {p.name for p in set(Path("/dev/shm").iterdir()) - before if p.name.startswith("carmesh-")}


async def test_a_version_triton_does_not_have_is_a_clear_startup_error(tmp_path: Path) -> None:
    raw = yolov8_raw([(32, 32, 20, 10)], [[0.1, 0.9]], anchors=4)
    model = write_yolov8_model(tmp_path / "m.onnx", raw, (64, 64), names=["car", "truck"])
    with pytriton_server({"cars": model}) as url:
        base = {"model_path": model, "backend": "triton", "triton_url": url, "triton_model_control": "none"}
        # Another name than Triton serves.
        with pytest.raises(StartupError, match=r"Triton at .*model 'trucks' version 1: not ready after 1.0s"):
            await detect_all({**base, "triton_model": "trucks", "triton_ready_timeout_s": 1.0}, [])
        # Explicit model control: pytriton's server has no onnxruntime backend, so loading the file fails
        # and says so (a stock tritonserver loads it).
        with pytest.raises(StartupError, match=r"model 'cars-onnx' version 1: load failed .*backend 'onnxruntime'"):
            await detect_all({**base, "triton_model": "cars-onnx", "triton_model_control": "explicit"}, [])
    # No server at all.
    with pytest.raises(StartupError, match=r"Triton at 127\.0\.0\.1:9, .*failed to connect"):
        await detect_all({**base, "triton_url": "127.0.0.1:9", "triton_timeout_s": 2.0}, [])
