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


def test_prepare_puts_the_mlflow_users_files_into_job_json_never_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The chart's training pods mount MLflow's Secret; job.json gets the user and the password's path."""
    folder = tmp_path / "data"
    folder.mkdir()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "username").write_text("trainer-bot\n")
    (secrets / "password").write_text("s3cret-pw\n")
    job_dir = tmp_path / "jobs" / "train-a"
    base = ["prepare", "--job-name", "train-a", "--job-dir", str(job_dir), "--dataset", str(folder)]
    base += ["--cache-dir", str(tmp_path / "cache")]
    files = ["--mlflow-username-file", str(secrets / "username"), "--mlflow-password-file", str(secrets / "password")]
    assert main([*base, *files]) == 0
    spec = JobSpec.read(job_dir)
    assert (spec.mlflow_username, spec.mlflow_password_file) == ("trainer-bot", str(secrets / "password"))
    assert "s3cret-pw" not in (job_dir / JOB_FILE).read_text()
    capsys.readouterr()
    # A user without a password, both kinds of user, or a password file the pod cannot read: exit 2.
    other = ["--job-dir", str(tmp_path / "other")]
    assert main([*base, *other, "--mlflow-username", "bot"]) == 2
    assert "--mlflow-password-file" in capsys.readouterr().err
    assert main([*base, *other, *files, "--mlflow-username", "bot"]) == 2
    assert "not both" in capsys.readouterr().err
    missing = ["--mlflow-username", "bot", "--mlflow-password-file", str(secrets / "absent")]
    assert main([*base, *other, *missing]) == 2
    assert str(secrets / "absent") in capsys.readouterr().err
    assert not (tmp_path / "other" / JOB_FILE).exists()
    # --dry-run reads no file (helm-check runs it with the mount paths of the rendered pods).
    assert main([*base, *other, *missing, "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["mlflow_username"], printed["mlflow_password_file"]) == ("bot", str(secrets / "absent"))
