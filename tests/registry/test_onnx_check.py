"""The ONNX checks and the Triton config, on files built here and on the real YOLOX-nano."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from registry_gateway.errors import BadModel
from registry_gateway.onnx_check import inspect_detector, parse_names
from registry_gateway.schema import Family
from registry_gateway.triton import triton_config
from tests.onnx_factory import write_yolox_model
from tests.registry.support import COCO80, YOLOX_NANO, yolov8_file, yolox_file


def test_yolov8_names_come_from_onnx_metadata(tmp_path: Path) -> None:
    spec = inspect_detector(yolov8_file(tmp_path / "m.onnx", names=["car", "truck", "bus"]), Family.YOLOV8)
    assert spec.class_names == ("car", "truck", "bus")
    assert (spec.input_width, spec.input_height) == (96, 64)
    assert spec.dynamic_batch
    assert [t.name for t in spec.inputs] == ["images"] and [t.name for t in spec.outputs] == ["output0"]


def test_request_names_take_precedence(tmp_path: Path) -> None:
    spec = inspect_detector(yolov8_file(tmp_path / "m.onnx"), Family.YOLOV8, ["vehicle", "lorry"])
    assert spec.class_names == ("vehicle", "lorry")


def test_ultralytics_names_literal() -> None:
    assert parse_names("{0: 'person', 1: 'bicycle', 2: 'car'}") == ("person", "bicycle", "car")
    assert parse_names("['a', 'b']") == ("a", "b")
    with pytest.raises(BadModel, match=r"class ids 0\.\.1"):
        parse_names("{0: 'a', 5: 'b'}")
    with pytest.raises(BadModel, match="literal"):
        parse_names("{0: person}")


def test_names_count_must_match_classes(tmp_path: Path) -> None:
    path = yolov8_file(tmp_path / "m.onnx", names=["car", "truck"])
    with pytest.raises(BadModel, match="predicts 2 classes but the request lists 3"):
        inspect_detector(path, Family.YOLOV8, ["a", "b", "c"])


def test_yolov8_without_names_needs_them_in_the_request(tmp_path: Path) -> None:
    path = yolov8_file(tmp_path / "m.onnx", names=None)
    with pytest.raises(BadModel, match="class names are required"):
        inspect_detector(path, Family.YOLOV8)
    assert inspect_detector(path, Family.YOLOV8, ["a", "b"]).class_names == ("a", "b")


def test_wrong_family_layout_is_named(tmp_path: Path) -> None:
    v8 = yolov8_file(tmp_path / "v8.onnx")
    with pytest.raises(BadModel, match=r"must be \[N,A,5\+nc\]"):
        inspect_detector(v8, Family.YOLOX, ["car", "truck"])
    x = yolox_file(tmp_path / "x.onnx", nc=3)
    with pytest.raises(BadModel, match=r"predicts 80 classes but the request lists 3 .*wrong family"):
        inspect_detector(x, Family.YOLOV8, ["a", "b", "c"])


def test_dynamic_input_size_is_rejected(tmp_path: Path) -> None:
    model = onnx.load(str(yolov8_file(tmp_path / "m.onnx")))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    onnx.save(model, str(tmp_path / "dyn.onnx"))
    with pytest.raises(BadModel, match="static height and width"):
        inspect_detector(tmp_path / "dyn.onnx", Family.YOLOV8)


def test_corrupt_and_truncated_bytes(tmp_path: Path) -> None:
    good = yolov8_file(tmp_path / "m.onnx").read_bytes()
    (tmp_path / "junk.onnx").write_bytes(b"this is not an onnx file" * 20)
    (tmp_path / "cut.onnx").write_bytes(good[: len(good) // 2])
    for name in ("junk.onnx", "cut.onnx"):
        with pytest.raises(BadModel, match="not a valid ONNX model"):
            inspect_detector(tmp_path / name, Family.YOLOV8)


def test_duplicate_or_empty_names(tmp_path: Path) -> None:
    path = yolov8_file(tmp_path / "m.onnx")
    with pytest.raises(BadModel, match="unique"):
        inspect_detector(path, Family.YOLOV8, ["car", "car"])
    with pytest.raises(BadModel, match="empty"):
        inspect_detector(path, Family.YOLOV8, ["car", " "])


def test_triton_config_dynamic_batch(tmp_path: Path) -> None:
    spec = inspect_detector(yolov8_file(tmp_path / "m.onnx", names=["car", "truck"]), Family.YOLOV8)
    text = triton_config("cars", spec, max_batch_size=8)
    assert 'name: "cars"' in text
    assert 'platform: "onnxruntime_onnx"' in text
    assert "max_batch_size: 8" in text
    assert "dynamic_batching { }" in text
    # The batch dimension is Triton's own when max_batch_size > 0: dims leave it out.
    assert 'name: "images"\n    data_type: TYPE_FP32\n    dims: [ 3, 64, 96 ]' in text
    assert 'name: "output0"\n    data_type: TYPE_FP32\n    dims: [ 6, 5 ]' in text


@pytest.mark.skipif(not YOLOX_NANO.is_file(), reason=f"{YOLOX_NANO} not present")
def test_real_yolox_nano_and_its_static_batch_config() -> None:
    spec = inspect_detector(YOLOX_NANO, Family.YOLOX, COCO80)
    assert (spec.input_width, spec.input_height) == (416, 416)
    assert spec.class_names[2] == "car"
    assert not spec.dynamic_batch
    text = triton_config("yolox-nano", spec, max_batch_size=8)
    assert "max_batch_size: 0" in text and "dynamic_batching" not in text
    assert 'name: "images"\n    data_type: TYPE_FP32\n    dims: [ 1, 3, 416, 416 ]' in text
    assert 'name: "output"\n    data_type: TYPE_FP32\n    dims: [ 1, 3549, 85 ]' in text
    with pytest.raises(BadModel, match="class names are required"):
        inspect_detector(YOLOX_NANO, Family.YOLOX)


def test_yolox_anchor_count_must_match_the_grid(tmp_path: Path) -> None:
    path = write_yolox_model(tmp_path / "x.onnx", np.zeros((1, 100, 8), np.float32))
    with pytest.raises(BadModel, match="A=84 for a 64x64 YOLOX input"):
        inspect_detector(path, Family.YOLOX, ["a", "b", "c"])


def test_family_is_detected_from_the_layout(tmp_path: Path) -> None:
    from tests.onnx_factory import write_yolov8_model, yolov8_raw

    v8 = write_yolov8_model(
        tmp_path / "v8.onnx", yolov8_raw([(1, 1, 2, 2)] * 10, [[0.5, 0.5]] * 10), names=["car", "bus"]
    )
    assert inspect_detector(v8, None).family is Family.YOLOV8
    anchors = sum((64 // s) * (64 // s) for s in (8, 16, 32))
    yx = write_yolox_model(tmp_path / "yx.onnx", np.zeros((1, anchors, 7), np.float32))
    spec = inspect_detector(yx, None, ["car", "bus"])
    assert spec.family is Family.YOLOX and spec.class_names == ("car", "bus")
