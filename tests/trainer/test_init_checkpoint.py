"""``carmesh train --init yolov8n.pt``: an Ultralytics checkpoint the test builds itself from the
YOLOv8n yaml (random weights, no download) loads into our Keras body and computes the same
head maps as PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.modelspec import ModelSpec
from trainer_worker.model import CheckpointError, build_body, load_ultralytics_checkpoint

torch = pytest.importorskip("torch")

COCO_CLASSES = tuple(f"class{i}" for i in range(80))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    import os

    folder = tmp_path_factory.mktemp("ultralytics")
    os.environ["YOLO_CONFIG_DIR"] = str(folder / "config")
    os.environ["YOLO_OFFLINE"] = "1"
    from ultralytics import YOLO

    yolo = YOLO("yolov8n.yaml")  # built from the architecture file shipped in the package
    path = folder / "yolov8n.pt"
    yolo.save(str(path))
    return path, yolo.model.float().eval()


def test_a_checkpoint_with_the_same_classes_computes_the_same_head_maps(checkpoint: tuple[Path, object]) -> None:
    path, reference = checkpoint
    spec = ModelSpec("n", COCO_CLASSES, 320, 256)
    body = build_body(spec)
    body(np.zeros((1, 256, 320, 3), np.float32))
    assert load_ultralytics_checkpoint(body, path) == len(body.weights)

    x = np.random.default_rng(0).random((1, 3, 256, 320), dtype=np.float32)
    with torch.no_grad():
        raw = reference(torch.from_numpy(x))[1]  # type: ignore[operator]
    ours = np.concatenate([np.asarray(f).reshape(1, -1, 144) for f in body(x.transpose(0, 2, 3, 1))], axis=1)
    theirs = np.transpose(torch.cat([raw["boxes"], raw["scores"]], 1).numpy(), (0, 2, 1))
    assert ours.shape == theirs.shape == (1, 32 * 40 + 16 * 20 + 8 * 10, 144)
    # Different kernels in two frameworks: float32 rounding, relative to the maps' scale.
    assert np.abs(ours - theirs).max() < 1e-3 * max(1.0, float(np.abs(theirs).max()))


def test_other_classes_keep_a_fresh_class_layer_and_everything_else_loads(checkpoint: tuple[Path, object]) -> None:
    path, _ = checkpoint
    spec = ModelSpec("n", ("car",), 320, 256)
    body = build_body(spec)
    body(np.zeros((1, 256, 320, 3), np.float32))
    # The class branch's width follows the class count; everything else comes from the checkpoint.
    outside_class_branch = sum("cv3" not in w.path for w in body.weights)
    assert outside_class_branch <= load_ultralytics_checkpoint(body, path) < len(body.weights)


def test_a_checkpoint_of_another_preset_is_refused(checkpoint: tuple[Path, object]) -> None:
    path, _ = checkpoint
    body = build_body(ModelSpec("s", ("car",), 320, 256))
    body(np.zeros((1, 256, 320, 3), np.float32))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_ultralytics_checkpoint(body, path)
