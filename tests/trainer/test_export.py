"""ONNX export of a Keras body: layout and metadata, Keras/ONNX Runtime parity, and that the file is
served unchanged by the detector's engine and accepted by the registry gateway's checks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import keras
import numpy as np
import onnxruntime as ort
import pytest

from detector import engine as det_engine
from detector import postprocess as det_post
from registry_gateway import onnx_check
from registry_gateway import triton as gw_triton
from registry_gateway.schema import Family
from tests.helpers import SHARED
from trainer.modelspec import ModelSpec
from trainer_worker.export import ExportInfo, check_parity, export_onnx, triton_config
from trainer_worker.model import build_body, build_inference_model

VAL_IMAGES = SHARED / "data" / "apollo-cars" / "val" / "images"
# Non-square on purpose, so a swapped height/width shows.
SPEC = ModelSpec(preset="n", class_names=("car", "van"), input_width=320, input_height=192)
CPU = det_engine.EngineOptions(providers=["CPUExecutionProvider"])


def _realistic_head(body: Any, seed: int, target_std: float = 3.0) -> None:
    """A fresh body's last head convs are initialised so the maps are nearly constant (DFL logits
    ~1e-4, class logits = the prior bias): parity on them would prove little. Random final 1x1
    kernels, rescaled so each map's logits spread with ``target_std``, give trained-like values."""
    rng = np.random.default_rng(seed)
    x = rng.random((1, SPEC.input_height, SPEC.input_width, 3), dtype=np.float32)
    finals = [
        w
        for w in body.weights
        if len(w.shape) == 4 and w.shape[:2] == (1, 1) and "model-22-cv" in w.path and w.path.endswith("-2/kernel")
    ]
    assert len(finals) == 6, [w.path for w in finals]  # box + class branch per level
    for w in finals:
        w.assign(rng.normal(0.0, 1.0, w.shape).astype(np.float32))
    maps = [np.asarray(f) for f in body(x, training=False)]
    for w in finals:
        level = int(w.path.split("model-22-cv")[1].split("-")[1])
        branch = maps[level][..., :64] if "cv2" in w.path else maps[level][..., 64:]
        w.assign(np.asarray(w) * (target_std / float(branch.std())))


@dataclass
class Exported:
    body: Any
    info: ExportInfo


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    # The body's other weights come from Keras's initialisers: seeded, so every run exports one file.
    keras.utils.set_random_seed(3)
    body = build_body(SPEC)
    _realistic_head(body, seed=3)
    info = export_onnx(body, SPEC, tmp_path_factory.mktemp("export") / "model.onnx")
    yield Exported(body=body, info=info)


def _frames(count: int) -> list[np.ndarray]:
    paths = sorted(VAL_IMAGES.glob("*.jpg"))[:count]
    assert len(paths) == count
    frames = [cv2.imread(str(p)) for p in paths]
    assert all(f is not None for f in frames)
    return frames


def test_export_writes_the_served_layout_and_ultralytics_metadata(exported: Exported) -> None:
    info = exported.info
    assert info.path.is_file() and info.size_bytes == info.path.stat().st_size > 1_000_000
    assert info.sha256 == hashlib.sha256(info.path.read_bytes()).hexdigest()
    assert (info.input_hw, info.num_classes) == ((192, 320), 2)
    session = ort.InferenceSession(str(info.path), providers=["CPUExecutionProvider"])
    (image,), (out,) = session.get_inputs(), session.get_outputs()
    assert (image.name, image.shape, image.type) == ("images", ["batch", 3, 192, 320], "tensor(float)")
    anchors = 24 * 40 + 12 * 20 + 6 * 10
    assert (out.name, out.shape) == ("output0", ["batch", 6, anchors])
    meta = dict(session.get_modelmeta().custom_metadata_map)
    assert meta["names"] == "{0: 'car', 1: 'van'}"
    assert (meta["imgsz"], meta["stride"], meta["task"]) == ("[192, 320]", "32", "detect")
    assert meta["carmesh.preset"] == "n" and meta["carmesh.input_width"] == "320"
    # Both readers of `names` in the mesh get the classes back.
    assert det_engine.parse_names(meta["names"]) == ("car", "van")
    assert onnx_check.parse_names(meta["names"]) == ("car", "van")
    out4 = session.run(None, {"images": np.zeros((4, 3, 192, 320), np.float32)})[0]
    assert out4.shape == (4, 6, anchors)


def test_keras_and_onnx_runtime_agree_on_real_frames_and_random_inputs(exported: Exported) -> None:
    engine = det_engine.load_engine(
        exported.info.path, det_engine.ModelSpec(ref=det_engine.ModelRef("t", "1"), family="yolov8"), CPU
    )
    # The detector's own letterboxing, so the inputs are exactly what it serves.
    frames = np.stack([engine.preprocess(f)[0] for f in _frames(2)])
    for images in (frames, None):
        report = check_parity(exported.body, SPEC, exported.info.path, images)
        assert report.num_images == 2
        # The maps carry real signal (see _realistic_head), so a small diff means something.
        assert min(report.head_max_value) > 1.0, report.describe()
        assert max(report.head_max_abs) < 1e-4, report.describe()
        assert report.score_max_abs < 1e-4, report.describe()
        # Box coordinates go through the DFL integral times the stride (up to 32 px per logit unit), so
        # head diffs of ~1e-5 become ~1e-3 px here: a hundredth of a pixel is far below anything served.
        assert report.box_max_abs < 1e-2 and report.box_max_rel < 1e-3, report.describe()
        assert report.ok


def test_box_parity_allows_what_the_head_maps_explain() -> None:
    from trainer_worker.export import ParityReport

    # An almost untrained model: DFL logits in the thousands agree to 1e-5 relative (0.025 absolute), which
    # can move a P5 box edge by 2 * 15 * 32 * 0.025 = 24 px; 0.16 px (1.7e-4 of 960) is then no disagreement.
    untrained = dict(
        num_images=1,
        input_hw=(544, 960),
        head_max_abs=(0.01, 0.02, 0.025),
        head_max_value=(1000.0, 2000.0, 2500.0),
        score_max_abs=1e-6,
        box_max_rel=1e-4,
    )
    allowance = 2 * 15 * 32 * 0.025
    assert ParityReport(**untrained, box_max_abs=0.16, box_allowance_px=allowance).ok  # type: ignore[arg-type]
    # Beyond both the input-size tolerance and what the heads explain: a real disagreement.
    report = ParityReport(**untrained, box_max_abs=30.0, box_allowance_px=allowance)  # type: ignore[arg-type]
    assert not report.ok and "DISAGREE" in report.describe()
    # Without the allowance the input-size tolerance alone applies (0.096 px at 960).
    assert not ParityReport(**untrained, box_max_abs=0.16).ok  # type: ignore[arg-type]
    assert ParityReport(**untrained, box_max_abs=0.09).ok  # type: ignore[arg-type]


def test_parity_detects_a_file_from_other_weights(exported: Exported) -> None:
    other = build_body(SPEC)
    _realistic_head(other, seed=4)
    report = check_parity(other, SPEC, exported.info.path)
    assert not report.ok
    assert max(report.head_max_abs) > 0.1 and "DISAGREE" in report.describe()


def test_exported_file_is_served_by_the_detector_engine_unchanged(exported: Exported) -> None:
    spec = det_engine.ModelSpec(ref=det_engine.ModelRef("car-detector", "1"), family="yolov8")
    engine = det_engine.load_engine(exported.info.path, spec, CPU)
    assert engine.class_names == ("car", "van")  # from the file's metadata
    assert engine.input_hw == (192, 320) and engine.static_batch is None
    frames = _frames(2)
    prepared = [engine.preprocess(f) for f in frames]
    batch = np.stack([t for t, _ in prepared])
    raw = engine.run(batch)
    assert raw.shape == (2, 6, 1260)
    keras_raw = np.asarray(build_inference_model(exported.body, SPEC)(batch))
    np.testing.assert_allclose(raw[:, 4:], keras_raw[:, 4:], atol=1e-4)
    # Random weights give real frames best scores anywhere from ~0.6 to ~0.99, so the threshold follows
    # them: half the lower of the two images' best scores keeps confident boxes in both, whatever the init.
    threshold = 0.5 * float(raw[:, 4:].max(axis=(1, 2)).min())
    params = det_post.PostprocessParams(score_threshold=threshold, iou_threshold=0.45, max_detections=50)
    height, width = frames[0].shape[:2]
    for (_, box), out in zip(prepared, raw, strict=True):
        found = det_post.postprocess(out, engine.family, engine.input_hw, box, params)
        # The confident boxes must land inside the source frame.
        assert len(found.boxes) > 0
        assert found.boxes.min() >= 0 and (found.boxes[:, [0, 2]] <= width).all()
        assert (found.boxes[:, [1, 3]] <= height).all()
        assert set(found.class_ids.tolist()) <= {0, 1}


def test_registry_gateway_accepts_the_file_and_writes_the_same_triton_config(exported: Exported) -> None:
    detected = onnx_check.inspect_detector(exported.info.path, None)
    assert detected.family is Family.YOLOV8
    assert detected.class_names == ("car", "van") and detected.dynamic_batch
    assert (detected.input_height, detected.input_width) == (192, 320)
    ours = triton_config(SPEC, "car-detector", max_batch_size=8)
    assert ours == gw_triton.triton_config("car-detector", detected, 8)
    assert 'name: "output0"' in ours and "dims: [ 6, 1260 ]" in ours and "dims: [ 3, 192, 320 ]" in ours


def test_triton_config_rejects_bad_names_and_batch_sizes() -> None:
    with pytest.raises(ValueError, match="Triton model name"):
        triton_config(SPEC, "../escape")
    with pytest.raises(ValueError, match="max_batch_size"):
        triton_config(SPEC, "ok", max_batch_size=0)


def test_export_fails_before_converting_when_the_directory_cannot_be_made(exported: Exported, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        export_onnx(exported.body, SPEC, blocker / "model.onnx")
    assert blocker.read_text() == "x"
