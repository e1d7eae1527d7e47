"""Settings of the trainer (env prefix ``CARMESH_TRAINER_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from kit import mlflow_auth
from kit.config import BaseSettings, existing_dirs


class Settings(BaseSettings):
    """Runs training jobs as local tf.distribute worker processes and registers the results in MLflow."""

    grpc_port: int = Field(50065, ge=0, le=65535, description="gRPC port (0: any free port)")
    metrics_port: int = Field(9465, ge=0, le=65535, description="Prometheus /metrics port (0: any free port)")

    work_dir: Path = Field(Path(".run/trainer"), description="jobs (checkpoints, logs, exports) and data set caches")
    feature_addr: str = Field("127.0.0.1:50063", min_length=1, description="feature_service (dataset snapshots)")
    registry_addr: str = Field("127.0.0.1:50064", min_length=1, description="registry_gateway (aliases, downloads)")
    mlflow_tracking_uri: str = Field("http://127.0.0.1:5000", min_length=1, description="MLflow tracking server")
    # MLflow's basic auth (kit/mlflow_auth.py): the password is a file read at start, never a flag; local
    # workers get the file's path in job.json and read it themselves, as training pods do.
    mlflow_username: str = Field("", description="MLflow user (with mlflow_password_file; empty: no basic auth)")
    mlflow_username_file: Path | None = Field(
        None, description="file holding the MLflow user (first line), instead of mlflow_username"
    )
    mlflow_password_file: Path | None = Field(None, description="file holding the MLflow user's password (first line)")
    experiment: str = Field("carmesh-training", min_length=1, description="MLflow experiment of training runs")
    model_name: str = Field("car-detector", min_length=1, description="registered model name by default")
    challenger_alias: str = Field("challenger", min_length=1, description="alias set on each newly trained version")

    max_running_jobs: int = Field(1, ge=1, le=64, description="jobs training at once (each takes its workers' cores)")
    max_workers: int = Field(8, ge=1, le=256, description="most worker processes one local job may start")
    max_restarts: int = Field(
        3, ge=0, le=100, description="times a job's workers are restarted from the last checkpoint after a crash"
    )
    cpu_threads: int = Field(
        0, ge=0, le=1024, description="TensorFlow threads shared by a job's workers (0: all cores)"
    )
    allowed_roots: list[Path] = Field(
        [],
        description="directories data set folders and init checkpoints may come from (empty: requests may name none)",
    )
    stop_grace_s: float = Field(20.0, ge=0, le=600, description="how long workers get to stop before SIGKILL")

    # Kubeflow TFJob rendering (RenderTrainingJob): what the cluster runs.
    # The image `make images` tags (devstack/images.py); tests/deploy checks it follows the version.
    tfjob_image: str = Field(
        "carmesh/trainer:0.2.0", min_length=1, description="container image of TFJob workers (never latest)"
    )
    tfjob_namespace: str = Field("carmesh", min_length=1, description="namespace of rendered TFJobs")
    tfjob_checkpoint_claim: str = Field("carmesh-trainer", min_length=1, description="PVC for TFJob checkpoints")
    tfjob_mlflow_secret: str = Field(
        "", description="Secret whose tfjob_mlflow_password_key TFJob pods mount as MLflow's password (empty: none)"
    )
    tfjob_mlflow_password_key: str = Field("password", min_length=1, description="key of tfjob_mlflow_secret")

    @field_validator("allowed_roots")
    @classmethod
    def _roots_exist(cls, value: list[Path]) -> list[Path]:
        return existing_dirs(value)

    @model_validator(mode="after")
    def _mlflow_credentials(self) -> Settings:
        mlflow_auth.check_settings(self.mlflow_username, self.mlflow_username_file, self.mlflow_password_file)
        if self.tfjob_mlflow_secret and self.mlflow_password_file is None:
            raise ValueError("tfjob_mlflow_secret needs the trainer's own MLflow user: its TFJob pods log in as it")
        return self
