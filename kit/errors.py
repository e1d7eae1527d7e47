"""Domain errors that carry their gRPC status code and rich details.

Daemons subclass these in their own ``errors.py``; the kit's interceptor turns them
into a status with the message, so handlers never touch ``context.abort`` directly.

Each error also becomes a ``google.rpc.Status`` (AIP-193): an ``ErrorInfo`` with a
machine-readable ``reason`` (UPPER_SNAKE_CASE, stable across releases: clients switch on
it, never on the message) and the domain ``carmesh.io``, plus ``BadRequest`` field
violations, ``RetryInfo``, ``ResourceInfo`` or ``PreconditionFailure`` when the error has
them. The status travels in the ``grpc-status-details-bin`` trailer, and the same message
is the per-item error of streams (``DetectStreamResponse.error``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

# The ErrorInfo domain of every error a carmesh daemon raises.
DOMAIN = "carmesh.io"
# The trailer gRPC clients (grpcio-status, grpc-go's status.FromError, ...) read rich details from.
STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path (``detect.score_threshold``) and what is wrong with it."""

    field: str
    description: str


@dataclass(frozen=True)
class Resource:
    """The resource an error is about (``ResourceInfo``): its type, name, and optionally owner."""

    type: str
    name: str
    owner: str = ""
    description: str = ""


@dataclass(frozen=True)
class PreconditionViolation:
    """One unmet precondition (``PreconditionFailure``); ``type`` is UPPER_SNAKE_CASE, e.g. ``MODEL``."""

    type: str
    subject: str
    description: str


class DomainError(Exception):
    """An error a client can act on; the message is shown to the client as is.

    ``reason`` (a class default, or per raise) names the error for programs. ``field`` (or the
    class's ``default_field``) is the shorthand for one ``BadRequest`` violation whose
    description is the message.
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"
    # The request field an error of this class is always about (e.g. ``image``), if any.
    default_field: str | None = None

    def __init__(
        self,
        message: str = "",
        *,
        reason: str | None = None,
        metadata: Mapping[str, object] | None = None,
        field: str | None = None,
        violations: Sequence[FieldViolation] = (),
        retry_after_s: float | None = None,
        resource: Resource | None = None,
        preconditions: Sequence[PreconditionViolation] = (),
    ) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        # ErrorInfo metadata is map<string, string>.
        self.metadata = {key: str(value) for key, value in (metadata or {}).items()}
        self.violations = list(violations)
        field = self.default_field if field is None else field
        if field is not None:
            self.violations.insert(0, FieldViolation(field, message))
        self.retry_after_s = retry_after_s
        self.resource = resource
        self.preconditions = list(preconditions)

    @property
    def message(self) -> str:
        return str(self)

    def status(self) -> status_pb2.Status:
        """This error as a ``google.rpc.Status``: code, message, and its details (ErrorInfo first)."""
        details: list[object] = [error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata)]
        if self.violations:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in self.violations
                    ]
                )
            )
        if self.retry_after_s is not None:
            details.append(error_details_pb2.RetryInfo(retry_delay=retry_delay(self.retry_after_s)))
        if self.resource is not None:
            r = self.resource
            details.append(
                error_details_pb2.ResourceInfo(
                    resource_type=r.type, resource_name=r.name, owner=r.owner, description=r.description
                )
            )
        if self.preconditions:
            details.append(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type=p.type, subject=p.subject, description=p.description
                        )
                        for p in self.preconditions
                    ]
                )
            )
        return make_status(self.code, self.message, details)

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """The trailers that carry this error's details to the client."""
        return ((STATUS_DETAILS_KEY, self.status().SerializeToString()),)


def retry_delay(seconds: float) -> duration_pb2.Duration:
    """A RetryInfo delay, rounded up to the millisecond so that a client never retries too early."""
    millis = max(1, math.ceil(seconds * 1000))
    return duration_pb2.Duration(seconds=millis // 1000, nanos=(millis % 1000) * 1_000_000)


def make_status(code: grpc.StatusCode, message: str, details: Sequence[object] = ()) -> status_pb2.Status:
    """A ``google.rpc.Status`` with each detail packed into an ``Any``."""
    packed = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)  # type: ignore[arg-type]
        packed.append(item)
    return status_pb2.Status(code=code.value[0], message=message, details=packed)


def internal_status(message: str) -> status_pb2.Status:
    """The status of a fault that is not the client's (an unexpected exception)."""
    return make_status(
        grpc.StatusCode.INTERNAL, message, [error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN)]
    )


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class Unavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class DeadlineExceeded(DomainError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class DataLoss(DomainError):
    code = grpc.StatusCode.DATA_LOSS
    reason = "DATA_LOSS"
