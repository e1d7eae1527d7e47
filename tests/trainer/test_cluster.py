"""trainer.cluster: the chart's training pods plan with the trainer's code and derive TF_CONFIG per index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.cluster import main, tf_config
from trainer.jobspec import JOB_FILE, JobSpec
from trainer.tfjob import TFJobError


def test_tf_config_names_every_indexed_pod_through_the_headless_service() -> None:
    config = json.loads(tf_config("train-a", "train-a", 3, 2222, 2))
    assert config == {
        "cluster": {"worker": ["train-a-0.train-a:2222", "train-a-1.train-a:2222", "train-a-2.train-a:2222"]},
        "task": {"type": "worker", "index": 2},
    }
    with pytest.raises(TFJobError, match="outside"):
        tf_config("train-a", "train-a", 2, 2222, 2)


def test_indexed_worker_needs_its_index(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["indexed-worker", "--job-name", "train-a", "--job-dir", "/j", "--workers", "2", "--service", "s"]
    assert main([*args, "--dry-run"], environ={}) == 2
    assert "JOB_COMPLETION_INDEX" in capsys.readouterr().err
    assert main([*args, "--dry-run"], environ={"JOB_COMPLETION_INDEX": "1"}) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["TF_CONFIG"]["task"]["index"] == 1 and printed["command"][-2:] == ["--job-dir", "/j"]


def test_prepare_writes_the_job_spec_the_worker_reads(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    job_dir = tmp_path / "jobs" / "train-a"
    args = ["prepare", "--job-name", "train-a", "--job-dir", str(job_dir), "--workers", "2"]
    args += ["--dataset", str(folder), "--epochs", "3", "--classes", "car,van", "--cpu", "1500m"]
    assert main([*args, "--cache-dir", str(tmp_path / "cache")]) == 0
    spec = JobSpec.read(job_dir)  # what python -m trainer_worker reads
    assert (spec.job_id, spec.data_path, spec.workers, spec.threads_per_worker) == ("train-a", str(folder), 2, 1)
    assert spec.model["class_names"] == ["car", "van"] and spec.recipe["epochs"] == 3


def test_prepare_refuses_a_bad_request_and_dry_run_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["prepare", "--job-name", "train-a", "--job-dir", str(tmp_path / "j"), "--cache-dir", str(tmp_path / "c")]
    assert main([*base, "--dataset", "apollo", "--preset", "huge", "--dry-run"]) == 2
    assert "preset" in capsys.readouterr().err
    assert main([*base, "--dataset", "apollo", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"] == "apollo"
    assert not (tmp_path / "j" / JOB_FILE).exists()
