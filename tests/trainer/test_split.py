"""The trainer daemon's package stays free of TensorFlow: every module of ``trainer`` imports in a
fresh interpreter without TensorFlow, Keras, kyolo, tf2onnx or the worker package being loaded."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO_ROOT

FORBIDDEN = ("tensorflow", "keras", "kyolo", "tf2onnx", "trainer_worker")

PROBE = """
import importlib, json, pkgutil, sys
import trainer
names = sorted(m.name for m in pkgutil.walk_packages(trainer.__path__, "trainer.") if m.name != "trainer.__main__")
for name in names:
    importlib.import_module(name)
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[1])))
print(json.dumps({"modules": names, "loaded": loaded}))
"""


def test_the_daemon_imports_no_tensorflow() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(FORBIDDEN)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    # The daemon's wiring, its RPCs and its jobs are among what was imported.
    assert {"trainer.app", "trainer.server", "trainer.jobs", "trainer.planning", "trainer.evaluate"} <= set(
        found["modules"]
    )
    assert found["loaded"] == [], f"the trainer daemon loaded {found['loaded']}"
