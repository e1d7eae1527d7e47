"""The int8 export (trainer_worker.quantize) on a model our trainer made: the committed street detector
(640x352, car and van), calibrated and checked on frames of the tracking renderer it was trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from bench.street_detector import Split, write_dataset
from trainer.modelspec import ModelSpec
from trainer.predict import ImageDetections, onnx_forward, predict_with
from trainer_worker.quantize import INT8, PRECISION_KEY, QuantizeError, float_tail, quantize_int8

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "street-detector" / "model.onnx"
SPEC = ModelSpec("n", ("car", "van"), 640, 352)


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    # Seeds the detector never saw (it was trained on 100-111): 12 frames of two scenes.
    out = write_dataset(tmp_path_factory.mktemp("render"), (Split("train", (300, 301), 45),), frames=270)
    return sorted((out / "train" / "images").glob("*.jpg"))


@pytest.fixture(scope="module")
def quantized(frames: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("int8") / "model.onnx"
    info = quantize_int8(MODEL, dst, frames[::2])
    assert info.path == dst and info.calibration_frames == len(frames[::2])
    assert info.size_bytes == dst.stat().st_size and len(info.sha256) == 64
    return dst


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return np.asarray(inter / (area_a[:, None] + area_b[None, :] - inter), np.float64)


def _confident(d: ImageDetections) -> np.ndarray:
    return d.boxes[d.scores >= 0.5]


def test_the_int8_model_finds_what_the_float_model_finds(frames: list[Path], quantized: Path) -> None:
    held_out = frames[1::2]  # not used for calibration
    reference = predict_with(onnx_forward(MODEL), SPEC, held_out)
    served = predict_with(onnx_forward(quantized), SPEC, held_out)
    wanted = found = 0
    for ref, got in zip(reference, served, strict=True):
        ref_boxes, got_boxes = _confident(ref), got.boxes[got.scores >= 0.3]
        wanted += len(ref_boxes)
        if len(ref_boxes) and len(got_boxes):
            found += int((_iou(ref_boxes, got_boxes).max(axis=1) >= 0.7).sum())
    assert wanted >= 10, "the rendered frames should hold confident detections"
    assert found >= 0.9 * wanted, f"int8 found {found} of the float model's {wanted} confident boxes"


def test_the_body_is_int8_and_the_decode_head_stays_float(quantized: Path) -> None:
    model = onnx.load(str(quantized))
    ops = [n.op_type for n in model.graph.node]
    # Every convolution reads quantized activations and weights (QDQ pairs that ONNX Runtime fuses).
    producer = {out: n for n in model.graph.node for out in n.output}
    kept = set(float_tail(onnx.load(str(MODEL))))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    body = [n for n in convs if n.name not in kept]
    logits = [n for n in convs if n.name in kept]
    # Every body convolution reads quantized activations and weights (QDQ pairs that ONNX Runtime fuses);
    # the head's six output convolutions (box and class logits of three levels) stay float.
    assert len(body) > 50 and len(logits) == 6
    assert all(producer[n.input[0]].op_type == "DequantizeLinear" for n in body)
    assert not any(producer[n.input[1]].op_type == "DequantizeLinear" for n in logits if n.input[1] in producer)
    assert ops.count("QuantizeLinear") >= len(body)
    # The output comes from float nodes: the head's boxes (pixels) and scores (0..1) share no uint8 scale.
    assert producer[model.graph.output[0].name].op_type not in {"DequantizeLinear", "QuantizeLinear"}


def test_metadata_is_kept_and_names_the_precision(quantized: Path) -> None:
    source = {p.key: p.value for p in onnx.load(str(MODEL)).metadata_props}
    got = {p.key: p.value for p in onnx.load(str(quantized)).metadata_props}
    assert got[PRECISION_KEY] == INT8
    assert {k: v for k, v in got.items() if k != PRECISION_KEY} == {
        k: v for k, v in source.items() if k != PRECISION_KEY
    }


def test_no_calibration_frames_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match="calibration frames"):
        quantize_int8(MODEL, tmp_path / "out.onnx", [])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(QuantizeError, match=r"bad\.jpg"):
        quantize_int8(MODEL, tmp_path / "out.onnx", [bad])
