"""MLflow tracking of one training job: one run, per-epoch metrics, artifacts, and a registered
model version that follows the carmesh tag schema (docs/registry.md) so registry_gateway and
the detector serve it like any imported model.

Uses ``MlflowClient`` (explicit run ids) rather than MLflow's fluent API, whose active run is
process-global state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kit.registry_tags import MODEL_ARTIFACT_DIR, TAG_EVAL, TAG_JOB_ID, merged_eval_tag

log = logging.getLogger(__name__)


class Tracker:
    """One MLflow run per job, created by the chief worker."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._experiment = experiment
        self.run_id = ""

    def _experiment_id(self) -> str:
        found = self._client.get_experiment_by_name(self._experiment)
        if found is not None:
            return str(found.experiment_id)
        from mlflow.exceptions import MlflowException

        try:
            return str(self._client.create_experiment(self._experiment))
        except MlflowException:  # another job created it first
            found = self._client.get_experiment_by_name(self._experiment)
            if found is None:
                raise
            return str(found.experiment_id)

    def start(self, job_id: str, params: Mapping[str, Any], tags: Mapping[str, str], run_id: str = "") -> str:
        """Starts the run, or reopens ``run_id`` when a restarted job resumes."""
        if run_id:
            self.run_id = run_id
            self._client.update_run(run_id, status="RUNNING")
            return run_id
        run = self._client.create_run(self._experiment_id(), run_name=job_id, tags={TAG_JOB_ID: job_id, **tags})
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        flat = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(flat), 100):
            self._client.log_batch(self.run_id, params=flat[i : i + 100])
        return self.run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        batch = [Metric(k, float(v), now_ms, step) for k, v in metrics.items() if _finite(v)]
        if batch:
            self._client.log_batch(self.run_id, metrics=batch)

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        self._client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._client.log_artifact(self.run_id, str(path), artifact_path)

    def artifact_uri(self) -> str:
        return str(self._client.get_run(self.run_id).info.artifact_uri)

    def register(self, model_name: str, tags: Mapping[str, str], description: str) -> str:
        """Registers the run's ``model/`` folder as a new version; returns the version number."""
        from mlflow.exceptions import MlflowException

        try:
            self._client.create_registered_model(model_name)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        mv = self._client.create_model_version(
            model_name,
            f"{self.artifact_uri()}/{MODEL_ARTIFACT_DIR}",
            run_id=self.run_id,
            tags=dict(tags),
            description=description,
        )
        return str(mv.version)

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id:
            self._client.set_terminated(self.run_id, status=status)


def record_evaluation(tracking_uri: str, model_name: str, version: str, key: str, result: Mapping[str, float]) -> None:
    """Merges one evaluation into the version's ``carmesh.eval`` tag."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mv = client.get_model_version(model_name, version)
    client.set_model_version_tag(model_name, version, TAG_EVAL, merged_eval_tag(mv.tags.get(TAG_EVAL), key, result))


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))
