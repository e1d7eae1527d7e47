"""Settings of the registry gateway (env prefix ``CARMESH_REGISTRY_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from kit import mlflow_auth
from kit.config import BaseSettings


class Settings(BaseSettings):
    """The gRPC face of the MLflow model registry."""

    grpc_port: int = Field(50064, ge=0, le=65535, description="gRPC port (0: any free port)")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus /metrics port (0: any free port)")
    mlflow_tracking_uri: str = Field("http://127.0.0.1:5000", description="MLflow tracking and registry URI")
    # MLflow's basic auth (kit/mlflow_auth.py): the password is a file read at start, never a flag.
    mlflow_username: str = Field("", description="MLflow user (with mlflow_password_file; empty: no basic auth)")
    mlflow_username_file: Path | None = Field(
        None, description="file holding the MLflow user (first line), instead of mlflow_username"
    )
    mlflow_password_file: Path | None = Field(None, description="file holding the MLflow user's password (first line)")
    # MLflow's own defaults retry for minutes; a gateway must answer UNAVAILABLE promptly instead.
    mlflow_max_retries: int = Field(2, ge=0, le=10, description="HTTP retries per MLflow request")
    mlflow_backoff_factor: int = Field(1, ge=0, le=60, description="MLflow retry backoff factor in seconds")
    mlflow_request_timeout_s: int = Field(60, ge=1, le=3600, description="timeout of one MLflow HTTP request")
    poll_interval_s: float = Field(1.0, gt=0, le=3600, description="how often WatchAlias polls MLflow per alias")
    # Limits of WatchAlias (docs/security.md, section 6): polls are per model, so these bound MLflow load too.
    watch_max_streams: int = Field(
        1000, ge=1, description="WatchAlias streams served at once (more: RESOURCE_EXHAUSTED)"
    )
    watch_max_aliases: int = Field(
        256, ge=1, description="distinct (model, alias) pairs watched at once (more: RESOURCE_EXHAUSTED)"
    )
    download_chunk_bytes: int = Field(1024 * 1024, ge=1024, le=16 * 1024 * 1024, description="default chunk size")
    cache_dir: Path = Field(Path(".run/registry-cache"), description="local ONNX cache, files named by sha256")
    cache_max_bytes: int = Field(
        4 * 1024**3,
        ge=0,
        description="most bytes of ONNX files kept in cache_dir, least recently served out (0: no bound; files "
        "served within the last minute are always kept)",
    )
    max_import_bytes: int = Field(1024 * 1024 * 1024, ge=1024, description="largest ONNX file ImportModel accepts")
    imports_experiment: str = Field("carmesh-imports", min_length=1, description="MLflow experiment for imports")
    triton_max_batch_size: int = Field(8, ge=1, le=1024, description="max_batch_size in generated Triton configs")

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _http_uri(cls, value: str) -> str:
        # The gateway talks to a tracking server; a file/sqlite URI would bypass proxied artifacts.
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URI of an MLflow tracking server, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _mlflow_credentials(self) -> Settings:
        mlflow_auth.check_settings(self.mlflow_username, self.mlflow_username_file, self.mlflow_password_file)
        return self
