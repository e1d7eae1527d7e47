"""trainer_worker.runtime: the oneDNN switch reaches TensorFlow, and a user's own setting wins."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_PROBE = (
    "from trainer_worker.runtime import prefer_onednn; prefer_onednn(); "
    "from tensorflow.python.util import _pywrap_util_port as port; print(port.IsMklEnabled())"
)


@pytest.mark.parametrize(("user_value", "expected"), [(None, "True"), ("0", "False"), ("1", "True")])
def test_prefer_onednn_reaches_tensorflow(user_value: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if user_value is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = user_value
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == expected
