"""Domain errors that carry their gRPC status code.

Daemons subclass these in their own ``errors.py``; the kit's interceptor turns them
into a status with the message, so handlers never touch ``context.abort`` directly.
"""

from __future__ import annotations

import grpc


class DomainError(Exception):
    """An error a client can act on; the message is shown to the client as is."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(DomainError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED


class DataLoss(DomainError):
    code = grpc.StatusCode.DATA_LOSS
