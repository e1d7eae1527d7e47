"""Trainer errors; the kit's interceptor maps each to its gRPC status with the message as is."""

from __future__ import annotations

from kit.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable

# One class for every daemon's path refusals (re-exported).
from kit.paths import PathNotAllowed as PathNotAllowed


class BadRequest(InvalidArgument):
    """A training or evaluation request that cannot run (bad preset, size, workers, class list...)."""

    reason = "INVALID_REQUEST"


class JobNotFound(NotFound):
    """No job with that id."""

    reason = "JOB_NOT_FOUND"


class DatasetNotFound(NotFound):
    """No snapshot or folder by that name."""

    reason = "DATASET_NOT_FOUND"


class TooManyJobs(ResourceExhausted):
    """max_running_jobs jobs are already running."""

    reason = "TOO_MANY_JOBS"


class JobFinished(FailedPrecondition):
    """The job already ended; it cannot be cancelled."""

    reason = "JOB_FINISHED"


class UpstreamUnavailable(Unavailable):
    """feature_service, registry_gateway or MLflow does not answer."""

    reason = "UPSTREAM_UNAVAILABLE"


class NotEvaluable(FailedPrecondition):
    """A model version the trainer cannot evaluate (not the YOLOv8 layout, no classes in common...)."""

    reason = "NOT_EVALUABLE"
