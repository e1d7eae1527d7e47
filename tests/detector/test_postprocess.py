"""Decoders, NMS and rescaling, against numbers worked out by hand (the letterbox: tests/kit/test_letterbox.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from detector.engine import EngineOptions, ModelRef, ModelSpec, load_engine, parse_names
from detector.errors import ModelLoadError
from detector.postprocess import (
    PostprocessParams,
    decode_yolov8,
    decode_yolox,
    expected_anchors_yolox,
    nms,
    postprocess,
    yolox_grid,
)
from kit.letterbox import Letterbox
from tests.onnx_factory import write_yolov8_model, write_yolox_model, yolov8_raw

CPU = EngineOptions(providers=["CPUExecutionProvider"])
ALL = PostprocessParams(score_threshold=0.25, iou_threshold=0.45, max_detections=100)


def spec(family: str, names: tuple[str, ...] = (), hw: tuple[int, int] = (64, 64)) -> ModelSpec:
    return ModelSpec(ref=ModelRef("test", "1"), family=family, class_names=names, input_hw=hw)


# --- decoders ----------------------------------------------------------------------------------------


def test_decode_yolov8_converts_centre_size_to_corners() -> None:
    raw = yolov8_raw([(32, 32, 20, 10), (10, 30, 8, 8)], [[0.9, 0.1], [0.2, 0.7]])[0]
    boxes, scores = decode_yolov8(raw)
    np.testing.assert_allclose(boxes, [[22, 27, 42, 37], [6, 26, 14, 34]])
    np.testing.assert_allclose(scores, [[0.9, 0.1], [0.2, 0.7]])


def test_yolox_grid_order_and_count() -> None:
    grid, stride = yolox_grid((64, 64))
    assert expected_anchors_yolox((64, 64)) == 84 == len(grid)  # 8*8 + 4*4 + 2*2
    # Row-major within each stride: index y*w + x.
    assert grid[19].tolist() == [3, 2] and stride[19, 0] == 8
    assert grid[64 + 9].tolist() == [1, 2] and stride[73, 0] == 16
    assert grid[81].tolist() == [1, 0] and stride[81, 0] == 32
    assert expected_anchors_yolox((416, 416)) == 3549


def yolox_raw_three_boxes() -> np.ndarray:
    raw = np.zeros((1, 84, 7), np.float32)
    # Stride 8, cell (3, 2): cx=(0.5+3)*8=28, cy=(0.25+2)*8=18, w=e^ln2*8=16, h=8 -> [20,14,36,22]; car 0.9*0.8.
    raw[0, 19] = [0.5, 0.25, math.log(2), 0, 0.9, 0.8, 0.1]
    # Stride 16, cell (1, 2): cx=16, cy=32, w=h=16 -> [8,24,24,40]; truck 0.5*0.9.
    raw[0, 73] = [0, 0, 0, 0, 0.5, 0.2, 0.9]
    # Stride 32, cell (1, 0): cx=(0.5+1)*32=48, cy=16, w=h=32 -> [32,0,64,32]; car 0.3*1.0.
    raw[0, 81] = [0.5, 0.5, 0, 0, 0.3, 1.0, 0.0]
    return raw


def test_decode_yolox_by_hand() -> None:
    boxes, scores = decode_yolox(yolox_raw_three_boxes()[0], (64, 64))
    np.testing.assert_allclose(boxes[19], [20, 14, 36, 22], atol=1e-5)
    np.testing.assert_allclose(boxes[73], [8, 24, 24, 40])
    np.testing.assert_allclose(boxes[81], [32, 0, 64, 32])
    np.testing.assert_allclose(scores[19], [0.72, 0.09], atol=1e-6)
    np.testing.assert_allclose(scores[73], [0.1, 0.45], atol=1e-6)
    assert scores[0].tolist() == [0, 0]  # objectness 0 elsewhere


def test_decode_yolox_rejects_a_wrong_anchor_count() -> None:
    with pytest.raises(ValueError, match="84"):
        decode_yolox(np.zeros((80, 7), np.float32), (64, 64))


# --- NMS and the whole post-processing ---------------------------------------------------------------


def test_nms_is_class_aware_and_keeps_best_first() -> None:
    boxes = np.array([[22, 27, 42, 37], [24, 27, 44, 37], [22, 27, 42, 37], [60, 60, 70, 70]], np.float32)
    scores = np.array([0.9, 0.8, 0.6, 0.3], np.float32)
    classes = np.array([0, 0, 1, 0])
    # IoU(0, 1) = 180 / 220 = 0.82: box 1 goes; box 2 is the same box but another class: kept.
    assert nms(boxes, scores, classes, 0.45, 100).tolist() == [0, 2, 3]
    # With an IoU threshold above 0.82 both overlapping boxes stay.
    assert nms(boxes, scores, classes, 0.85, 100).tolist() == [0, 1, 2, 3]
    assert nms(boxes, scores, classes, 0.45, 2).tolist() == [0, 2]
    assert nms(boxes[:0], scores[:0], classes[:0], 0.45, 10).tolist() == []


def test_postprocess_yolov8_threshold_filter_and_source_pixels() -> None:
    raw = yolov8_raw(
        [(32, 32, 20, 10), (34, 32, 20, 10), (10, 30, 8, 8), (32, 32, 20, 10), (50, 50, 4, 4)],
        [[0.9, 0.1], [0.8, 0.05], [0.2, 0.7], [0.1, 0.6], [0.2, 0.1]],
    )[0]
    box = Letterbox(scale=0.5, pad_x=0.0, pad_y=16.0, source_width=128, source_height=64)
    found = postprocess(raw, "yolov8", (64, 64), box, ALL)
    # Anchor 1 is suppressed by anchor 0 (same class); anchor 4 is under the threshold.
    np.testing.assert_allclose(found.scores, [0.9, 0.7, 0.6])
    assert found.class_ids.tolist() == [0, 1, 1]
    np.testing.assert_allclose(found.boxes, [[44, 22, 84, 42], [12, 20, 28, 36], [44, 22, 84, 42]])

    only_car = PostprocessParams(0.25, 0.45, 100, frozenset({0}))
    assert postprocess(raw, "yolov8", (64, 64), box, only_car).class_ids.tolist() == [0]
    strict = PostprocessParams(0.65, 0.45, 100)
    assert postprocess(raw, "yolov8", (64, 64), box, strict).scores.tolist() == pytest.approx([0.9, 0.7])
    assert len(postprocess(raw, "yolov8", (64, 64), box, PostprocessParams(0.25, 0.45, 1))) == 1


def test_postprocess_yolox_top_left_letterbox() -> None:
    # Source 128x64 -> scale 0.5, image at the top-left (no offset): source = input * 2.
    box = Letterbox(scale=0.5, pad_x=0.0, pad_y=0.0, source_width=128, source_height=64)
    found = postprocess(yolox_raw_three_boxes()[0], "yolox", (64, 64), box, ALL)
    np.testing.assert_allclose(found.scores, [0.72, 0.45, 0.3], atol=1e-6)
    assert found.class_ids.tolist() == [0, 1, 0]
    # [8,24,24,40]*2 = [16,48,48,80], clipped to the 64-pixel-high image.
    np.testing.assert_allclose(found.boxes, [[40, 28, 72, 44], [16, 48, 48, 64], [64, 0, 128, 64]], atol=1e-4)


def test_postprocess_ignores_non_finite_outputs() -> None:
    raw = yolov8_raw([(32, 32, 20, 10), (10, 10, 4, 4)], [[0.9], [0.8]])[0]
    raw[0, 0] = np.nan
    box = Letterbox(1.0, 0.0, 0.0, 64, 64)
    found = postprocess(raw, "yolov8", (64, 64), box, ALL)
    assert found.scores.tolist() == pytest.approx([0.8])


# --- engines built from the ONNX factory ------------------------------------------------------------


def test_engine_yolov8_end_to_end_geometry(tmp_path: Path) -> None:
    raw = yolov8_raw([(32, 32, 20, 10), (10, 30, 8, 8)], [[0.9, 0.1], [0.2, 0.7]], anchors=6)
    path = write_yolov8_model(tmp_path / "v8.onnx", raw, (64, 64), names=["car", "truck"])
    engine = load_engine(path, spec("yolov8"), CPU)
    assert engine.class_names == ("car", "truck")  # from the file's `names` metadata
    assert engine.input_hw == (64, 64) and engine.static_batch is None
    image = np.zeros((64, 128, 3), np.uint8)
    tensor, box = engine.preprocess(image)
    assert tensor.shape == (3, 64, 64) and tensor.dtype == np.float32
    # RGB 0..1 with pad 114/255 above and below the (black) image.
    assert tensor[0, 0, 0] == pytest.approx(114 / 255) and tensor[0, 32, 32] == 0
    out = engine.run(np.stack([tensor, tensor, tensor]))
    assert out.shape == (3, 6, 6)
    found = postprocess(out[2], engine.family, engine.input_hw, box, ALL)
    np.testing.assert_allclose(found.boxes, [[44, 22, 84, 42], [12, 20, 28, 36]])


def test_engine_yolox_end_to_end_geometry(tmp_path: Path) -> None:
    path = write_yolox_model(tmp_path / "x.onnx", yolox_raw_three_boxes(), (64, 64))
    engine = load_engine(path, spec("yolox", ("car", "truck")), CPU)
    image = np.full((64, 128, 3), (10, 20, 30), np.uint8)
    tensor, box = engine.preprocess(image)
    # BGR 0..255 unnormalised, image top-left, pad 114 below it.
    assert tensor[:, 0, 0].tolist() == [10, 20, 30] and tensor[:, 40, 0].tolist() == [114, 114, 114]
    assert (box.pad_x, box.pad_y, box.scale) == (0.0, 0.0, 0.5)
    found = postprocess(engine.run(tensor[None])[0], engine.family, engine.input_hw, box, ALL)
    np.testing.assert_allclose(found.boxes[0], [40, 28, 72, 44], atol=1e-4)


def test_engine_with_static_batch_runs_items_one_by_one(tmp_path: Path) -> None:
    raw = yolov8_raw([(32, 32, 20, 10)], [[0.9]])
    path = write_yolov8_model(tmp_path / "v8.onnx", raw, (64, 64), names=["car"])
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(path))
    engine = load_engine(path, spec("yolov8"), EngineOptions(["CPUExecutionProvider"], warmup_batch_size=4))
    assert engine.static_batch == 1
    out = engine.run(np.zeros((3, 3, 64, 64), np.float32))
    assert out.shape == (3, 5, 1)
    np.testing.assert_allclose(out[:, :, 0], [[32, 32, 20, 10, 0.9]] * 3, rtol=1e-6)


def test_a_lone_batch_runs_on_the_solo_session_with_every_core_and_the_same_answer(tmp_path: Path) -> None:
    raw = yolov8_raw([(32, 32, 20, 10)], [[0.9]])
    path = write_yolov8_model(tmp_path / "v8.onnx", raw, (64, 64), names=["car"])
    split = EngineOptions(["CPUExecutionProvider"], intra_op_threads=1, solo_intra_op_threads=2)
    engine = load_engine(path, spec("yolov8"), split)
    assert engine.solo_session is not None and engine.solo_session is not engine.session
    batch = np.zeros((2, 3, 64, 64), np.float32)
    np.testing.assert_array_equal(engine.run(batch, alone=True), engine.run(batch, alone=False))
    # Nothing to gain when the cores are not split (or the threads are set by hand): one session.
    assert load_engine(path, spec("yolov8"), EngineOptions(["CPUExecutionProvider"], 2, 1, 2)).solo_session is None
    assert load_engine(path, spec("yolov8"), CPU).solo_session is None


def test_engine_rejects_a_mismatched_family_and_class_count(tmp_path: Path) -> None:
    path = write_yolox_model(tmp_path / "x.onnx", yolox_raw_three_boxes(), (64, 64))
    with pytest.raises(ModelLoadError, match="set family yolox"):
        load_engine(path, spec("yolov8"), CPU)
    with pytest.raises(ModelLoadError, match="3 class names given but the output has 2"):
        load_engine(path, spec("yolox", ("a", "b", "c")), CPU)
    v8 = write_yolov8_model(tmp_path / "v8.onnx", yolov8_raw([(1, 1, 1, 1)], [[0.5]]), (64, 64))
    with pytest.raises(ModelLoadError, match="YOLOX layout"):
        load_engine(v8, spec("yolox"), CPU)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_engine(junk, spec("yolov8"), CPU)


def test_engine_without_names_uses_generic_ones(tmp_path: Path) -> None:
    path = write_yolox_model(tmp_path / "x.onnx", yolox_raw_three_boxes(), (64, 64))
    assert load_engine(path, spec("yolox"), CPU).class_names == ("class_0", "class_1")


def test_parse_names_formats() -> None:
    assert parse_names("{0: 'person', 1: 'car'}") == ("person", "car")
    assert parse_names('["a", "b"]') == ("a", "b")
    assert parse_names('{"1": "b", "0": "a"}') == ("a", "b")
    assert parse_names("garbage(") == ()
