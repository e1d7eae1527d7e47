"""The Triton backend's naming and model config, without a server."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from detector.config import Settings
from detector.engine import ModelIO, ModelRef, ModelSpec
from detector.triton import model_config, triton_model


def spec(version: str) -> ModelSpec:
    return ModelSpec(ref=ModelRef("car-detector", version, "champion"), family="yolov8")


def test_triton_names_and_versions() -> None:
    assert triton_model("", spec("3")) == ("car-detector", "3")
    # A local file's version (a sha256 prefix) is not a Triton version: 1.
    assert triton_model("", spec("e8af074932d4")) == ("car-detector", "1")
    assert triton_model("yolo", spec("3")) == ("yolo", "3")
    # With {version} in the name each version is a model of its own, asked for without a number.
    assert triton_model("{name}-v{version}", spec("3")) == ("car-detector-v3", "")


def test_model_config_batches_when_the_file_does() -> None:
    dynamic = ModelIO("images", np.float32, (None, 3, 640, 640), "output0", (None, 84, 8400))
    config = model_config("m", dynamic, 8)
    assert config["backend"] == "onnxruntime" and config["max_batch_size"] == 8 and "dynamic_batching" in config
    assert config["input"] == [{"name": "images", "data_type": "TYPE_FP32", "dims": [3, 640, 640]}]
    assert config["output"] == [{"name": "output0", "data_type": "TYPE_FP32", "dims": [84, 8400]}]
    static = ModelIO("images", np.float16, (1, 3, 416, 416), "output", (1, 3549, 85))
    config = model_config("m", static, 8)
    assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
    assert config["input"][0] == {"name": "images", "data_type": "TYPE_FP16", "dims": [1, 3, 416, 416]}


@pytest.mark.parametrize("name", ["a{b}", "x/y", "two words", "{name}{"])
def test_triton_model_setting_refuses_what_is_no_name(name: str) -> None:
    with pytest.raises(ValidationError, match="triton_model"):
        Settings.model_validate({"triton_model": name})


def test_backend_setting() -> None:
    assert Settings.model_validate({"mesh_plaintext": True}).backend == "onnxruntime"
    with pytest.raises(ValidationError, match="backend"):
        Settings.model_validate({"backend": "tensorrt", "mesh_plaintext": True})
