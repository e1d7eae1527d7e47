"""Trainer errors; the kit's interceptor maps each to its gRPC status with the message as is."""

from __future__ import annotations

from kit.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted, Unavailable


class BadRequest(InvalidArgument):
    """A training or evaluation request that cannot run (bad preset, size, workers, class list...)."""


class JobNotFound(NotFound):
    """No job with that id."""


class DatasetNotFound(NotFound):
    """No snapshot or folder by that name."""


class PathNotAllowed(PermissionDenied):
    """A local data set folder outside the configured allowed_roots."""


class TooManyJobs(ResourceExhausted):
    """max_running_jobs jobs are already running."""


class JobFinished(FailedPrecondition):
    """The job already ended; it cannot be cancelled."""


class UpstreamUnavailable(Unavailable):
    """feature_service, registry_gateway or MLflow does not answer."""


class NotEvaluable(FailedPrecondition):
    """A model version the trainer cannot evaluate (not the YOLOv8 layout, no classes in common...)."""
