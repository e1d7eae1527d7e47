"""Registry errors, each mapped to a gRPC status by the kit's interceptor, and the translation
of MLflow's exceptions into them."""

from __future__ import annotations

import requests
from mlflow.exceptions import MlflowException

from kit import mlflow_auth
from kit.errors import (
    AlreadyExists,
    DataLoss,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

__all__ = [
    "AlreadyExists",
    "BadModel",
    "DataLoss",
    "FailedPrecondition",
    "InvalidArgument",
    "MlflowFailure",
    "MlflowRefused",
    "MlflowUnavailable",
    "NotFound",
    "ResourceExhausted",
    "from_mlflow",
]


class BadModel(InvalidArgument):
    """The uploaded file is not an ONNX detector of the declared family."""

    reason = "INVALID_MODEL"


class MlflowUnavailable(Unavailable):
    """MLflow cannot be reached (connection refused, timeout, 5xx after retries)."""

    reason = "MLFLOW_UNAVAILABLE"


class MlflowRefused(Unavailable):
    """MLflow answered 401 or 403 to the gateway's own credentials: the operator's to fix (the caller's key
    was fine), so UNAVAILABLE rather than UNAUTHENTICATED, which would blame the caller."""

    reason = "MLFLOW_CREDENTIALS_REFUSED"


class MlflowFailure(DomainError):
    """An MLflow error with no better status; reported as INTERNAL with MLflow's message."""

    reason = "MLFLOW_FAILED"


_BY_CODE: dict[str, type[DomainError]] = {
    "RESOURCE_DOES_NOT_EXIST": NotFound,
    "NOT_FOUND": NotFound,
    "ENDPOINT_NOT_FOUND": NotFound,
    "RESOURCE_ALREADY_EXISTS": AlreadyExists,
    "ALREADY_EXISTS": AlreadyExists,
    "INVALID_PARAMETER_VALUE": InvalidArgument,
    "BAD_REQUEST": InvalidArgument,
    "MALFORMED_REQUEST": InvalidArgument,
    "INVALID_STATE": FailedPrecondition,
    "REQUEST_LIMIT_EXCEEDED": ResourceExhausted,
    "RESOURCE_EXHAUSTED": ResourceExhausted,
    "TEMPORARILY_UNAVAILABLE": MlflowUnavailable,
    "SERVICE_UNDER_MAINTENANCE": MlflowUnavailable,
}

# Connection-level failures: MLflow wraps them in a plain MlflowException (INTERNAL_ERROR),
# keeping the original exception only in the chain.
_UNREACHABLE = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError, TimeoutError)


def _unreachable(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, _UNREACHABLE):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def from_mlflow(exc: Exception, tracking_uri: str, username: str = "") -> DomainError:
    """The domain error for an exception raised by the MLflow client (``username``: the gateway's MLflow
    user, named when MLflow refuses it)."""
    if isinstance(exc, DomainError):
        return exc
    if _unreachable(exc):
        return MlflowUnavailable(f"MLflow at {tracking_uri} is unreachable: {_short(exc)}")
    if isinstance(exc, MlflowException):
        code = str(exc.error_code)
        if mlflow_auth.refused(exc):
            return MlflowRefused(f"{mlflow_auth.refused_hint(tracking_uri, username)} ({code})")
        message = exc.message
        # Server errors arrive as "CODE: text"; the status already carries the code.
        if message.startswith(code + ": "):
            message = message[len(code) + 2 :]
        cls = _BY_CODE.get(code)
        if cls is None:
            return MlflowFailure(f"MLflow at {tracking_uri} failed: {code}: {message}")
        # The class's reason (NOT_FOUND...) is what clients switch on; MLflow's own code is kept for people.
        return cls(message, metadata={"mlflow_error_code": code})
    return MlflowFailure(f"MLflow client error: {type(exc).__name__}: {_short(exc)}")


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."
