"""Two MultiWorkerMirroredStrategy workers on 127.0.0.1: identical weights, and resume after a killed worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, free_port
from tests.support import eventually
from tests.trainer.synthetic import make_kitti


def _start(data: Path, ck: Path, outs: list[Path], epochs: int, delay_s: float) -> list[subprocess.Popen[bytes]]:
    ports = [free_port(), free_port()]
    procs = []
    for index, out in enumerate(outs):
        cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = {
            **os.environ,
            "TF_CONFIG": json.dumps(tf_config),
            "PYTHONPATH": str(REPO_ROOT),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "CUDA_VISIBLE_DEVICES": "",
        }
        worker = "tests.trainer.dist_worker"
        args = [sys.executable, "-m", worker, str(data), str(ck), str(out), str(epochs), str(delay_s)]
        log = out.with_suffix(".log").open("ab")
        procs.append(subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _results(procs: list[subprocess.Popen[bytes]], outs: list[Path], timeout_s: float) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout_s
    try:
        for proc, out in zip(procs, outs, strict=True):
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            assert rc == 0, out.with_suffix(".log").read_text()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [json.loads(out.read_text()) for out in outs]


@pytest.mark.timeout(400)
def test_two_workers_train_to_identical_weights(tmp_path: Path) -> None:
    data = make_kitti(tmp_path / "ds", n_train=6, n_val=1)
    outs = [tmp_path / "w0.json", tmp_path / "w1.json"]
    results = _results(_start(data, tmp_path / "ck", outs, epochs=2, delay_s=0.0), outs, timeout_s=360)
    assert [r["chief"] for r in results] == [True, False]
    assert all(r["replicas"] == 2 and r["epochs_completed"] == 2 and r["last_step"] == 6 for r in results)
    assert results[0]["digest"] == results[1]["digest"]
    # Only the chief keeps checkpoints.
    assert list((tmp_path / "ck").glob("ckpt-*.index"))


# About 2 minutes on 2 idle cores; the generous limits are for a machine shared with other jobs.
@pytest.mark.timeout(600)
def test_killed_worker_resumes_from_last_checkpoint(tmp_path: Path) -> None:
    data = make_kitti(tmp_path / "ds", n_train=6, n_val=1)
    outs = [tmp_path / "w0.json", tmp_path / "w1.json"]
    procs = _start(data, tmp_path / "ck", outs, epochs=4, delay_s=0.5)
    progress = outs[0].with_suffix(".progress")

    def chief_finished_epoch_1() -> bool:
        # A worker that already exited will not get there: fail at once, with its log.
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(outs[0].with_suffix(".log").read_text()[-3000:])
        return progress.exists() and "epoch 1" in progress.read_text()

    try:
        eventually(chief_finished_epoch_1, what="the chief to finish epoch 1", timeout_s=280)
        procs[1].kill()  # the non-chief dies mid-run; the chief then blocks in its next all-reduce
        procs[1].wait()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    done = sum(line.startswith("epoch") for line in progress.read_text().splitlines())
    assert 1 <= done < 4
    results = _results(_start(data, tmp_path / "ck", outs, epochs=4, delay_s=0.0), outs, timeout_s=280)
    # 3 steps per epoch: training continues after the last finished epoch instead of from step 1.
    assert all(r["first_step"] == done * 3 + 1 and r["epochs_completed"] == 4 for r in results)
    assert results[0]["digest"] == results[1]["digest"]
