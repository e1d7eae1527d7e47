"""``carmesh train --init yolov8n.pt``: an Ultralytics checkpoint the test builds itself from the
YOLOv8n yaml (random weights, no download) loads into our Keras body and computes the same
head maps as PyTorch; a checkpoint that would run code when unpickled is refused and runs nothing
(issue 16, hole 2)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from trainer.modelspec import ModelSpec
from trainer_worker.checkpoint import read_checkpoint
from trainer_worker.model import CheckpointError, build_body, load_ultralytics_checkpoint

torch = pytest.importorskip("torch")
load_torch_state_dict = pytest.importorskip("kyolo.conversion").load_torch_state_dict

COCO_CLASSES = tuple(f"class{i}" for i in range(80))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
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


class _Payload:
    """Unpickling this runs a shell command that creates ``marker``: what a hostile ``.pt`` does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_the_payload_runs_when_unpickled_as_kyolo_would(tmp_path: Path) -> None:
    # The check that the tests below could fail: kyolo's loader (weights_only=False) runs it.
    marker = tmp_path / "ran"
    torch.save({"model": _Payload(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"refused: it would run posix\.system"):
        read_checkpoint(path)
    assert not marker.exists()


def test_a_real_model_carrying_a_payload_is_refused(checkpoint: tuple[Path, object], tmp_path: Path) -> None:
    path, _ = checkpoint
    marker = tmp_path / "ran"
    loaded = torch.load(path, weights_only=False)  # the test's own trusted file
    loaded["model"].payload = _Payload(marker)
    evil = tmp_path / "yolov8n-evil.pt"
    torch.save(loaded, evil)
    marker.unlink(missing_ok=True)
    body = build_body(ModelSpec("n", ("car",), 320, 256))
    body(np.zeros((1, 256, 320, 3), np.float32))
    with pytest.raises(CheckpointError, match=r"posix\.system"):
        load_ultralytics_checkpoint(body, evil)
    assert not marker.exists()


def test_files_that_are_no_checkpoint_are_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"model": 1}))  # a bare pickle, not torch.save's zip
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_checkpoint(plain)


def test_the_weights_read_are_kyolos_without_unpickling(checkpoint: tuple[Path, object]) -> None:
    path, _ = checkpoint
    ours = read_checkpoint(path)
    theirs = load_torch_state_dict(str(path))  # unpickles: acceptable only for the test's own file
    assert list(ours) == list(theirs) and all(np.array_equal(ours[k], theirs[k]) for k in theirs)
