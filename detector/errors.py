"""Detector errors; the kit's interceptor maps each to its gRPC status with the message as is."""

from __future__ import annotations

from kit.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable


class BadImage(InvalidArgument):
    """The image bytes are empty, not an image, corrupt, truncated or too large."""

    reason = "INVALID_IMAGE"
    default_field = "image"


class BadParameter(InvalidArgument):
    """A threshold, class filter or limit in the request is out of range."""

    reason = "INVALID_PARAMETER"


class QueueFull(ResourceExhausted):
    """More requests are waiting than the detector admits."""

    reason = "QUEUE_FULL"


class NoModel(Unavailable):
    """No model is loaded yet (registry unreachable, alias unset, or the model failed to load)."""

    reason = "MODEL_NOT_LOADED"


class ModelClosed(Unavailable):
    """The model a request was admitted to was closed before it ran (drain timed out or shutdown)."""

    reason = "MODEL_CLOSED"


class ModelLoadError(FailedPrecondition):
    """An ONNX file cannot be served: unreadable, wrong layout, or the class names do not fit it."""

    reason = "INVALID_MODEL"


class DownloadError(Exception):
    """A model download failed or its bytes do not match the registry's sha256; retried with backoff."""


class InferenceFailed(DomainError):
    """ONNX Runtime failed on a batch (INTERNAL): a model or runtime fault, not the request's."""

    reason = "INFERENCE_FAILED"


class BadTensor(InvalidArgument):
    """A KServe v2 inference request whose tensors do not fit the model (name, datatype, shape, size, values)."""

    reason = "INVALID_TENSOR"


class UnknownModel(NotFound):
    """A KServe v2 request names a model or version this detector does not serve."""

    reason = "MODEL_NOT_FOUND"
