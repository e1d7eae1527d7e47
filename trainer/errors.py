"""Trainer errors; the kit's interceptor maps each to its gRPC status with the message as is."""

from __future__ import annotations

from kit.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted, Unavailable


class BadRequest(InvalidArgument):
    """A training or evaluation request that cannot run (bad preset, size, workers, class list...)."""

    reason = "INVALID_REQUEST"


class JobNotFound(NotFound):
    """No job with that id."""

    reason = "JOB_NOT_FOUND"


class DatasetNotFound(NotFound):
    """No snapshot or folder by that name."""

    reason = "DATASET_NOT_FOUND"


class PathNotAllowed(PermissionDenied):
    """A local data set folder outside the configured allowed_roots."""

    reason = "PATH_NOT_ALLOWED"


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
