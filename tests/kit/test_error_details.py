"""Domain errors reach clients as a google.rpc.Status in the grpc-status-details-bin trailer:
ErrorInfo (reason, domain, metadata), BadRequest, RetryInfo, ResourceInfo, PreconditionFailure,
for unary and streaming calls, and for unexpected faults (INTERNAL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2
from grpc_status import rpc_status

from carmesh.v1 import detector_pb2, detector_pb2_grpc
from kit.clients import insecure_channel
from kit.errors import (
    DOMAIN,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
    Resource,
    ResourceExhausted,
    retry_delay,
)
from tests.kit.support import detector_server
from tests.status_details import details_of


class Servicer(detector_pb2_grpc.DetectorServiceServicer):
    async def Detect(self, request: detector_pb2.DetectRequest, context: Any) -> detector_pb2.DetectResponse:
        if request.request_id == "bad":
            raise InvalidArgument(
                "score_threshold 2 is outside [0, 1]", reason="INVALID_THRESHOLD", field="score_threshold"
            )
        if request.request_id == "full":
            raise ResourceExhausted("queue full", reason="QUEUE_FULL", metadata={"max_queue": 8}, retry_after_s=0.25)
        if request.request_id == "missing":
            raise NotFound("no model car v9", reason="MODEL_NOT_FOUND", resource=Resource("model", "car/9"))
        if request.request_id == "precondition":
            raise FailedPrecondition(
                "not loaded",
                preconditions=[PreconditionViolation("MODEL", "car-detector", "no version is loaded")],
                violations=[FieldViolation("classes", "unknown class 'tank'")],
            )
        if request.request_id == "trailer":
            context.set_trailing_metadata((("x-kept", "yes"),))
            raise InvalidArgument("plain")
        raise ZeroDivisionError("boom")

    async def DetectStream(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[detector_pb2.DetectStreamResponse]:
        async for item in request_iterator:
            if item.detect.request_id == "bad":
                raise InvalidArgument("bad item", reason="INVALID_IMAGE", field="detect.image")
            yield detector_pb2.DetectStreamResponse(request_id=item.detect.request_id)


@pytest.fixture
async def address() -> AsyncIterator[str]:
    async with detector_server(Servicer()) as server:
        yield server.address


async def _failed_status(address: str, request_id: str) -> tuple[grpc.aio.AioRpcError, status_pb2.Status]:
    async with insecure_channel(address) as channel:
        stub = detector_pb2_grpc.DetectorServiceStub(channel)
        call = stub.Detect(detector_pb2.DetectRequest(request_id=request_id))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        status = await rpc_status.aio.from_call(call)
        assert status is not None
        return err.value, status


async def test_bad_request_carries_reason_and_field(address: str) -> None:
    error, status = await _failed_status(address, "bad")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and status.message == error.details()
    details = details_of(status)
    assert details["ErrorInfo"].reason == "INVALID_THRESHOLD" and details["ErrorInfo"].domain == DOMAIN
    [violation] = details["BadRequest"].field_violations
    assert (violation.field, violation.description) == ("score_threshold", "score_threshold 2 is outside [0, 1]")


async def test_retry_info_and_metadata(address: str) -> None:
    _, status = await _failed_status(address, "full")
    details = details_of(status)
    assert details["ErrorInfo"].reason == "QUEUE_FULL" and dict(details["ErrorInfo"].metadata) == {"max_queue": "8"}
    assert details["RetryInfo"].retry_delay.ToMilliseconds() == 250


async def test_resource_and_precondition_details(address: str) -> None:
    _, status = await _failed_status(address, "missing")
    details = details_of(status)
    assert details["ErrorInfo"].reason == "MODEL_NOT_FOUND"
    assert (details["ResourceInfo"].resource_type, details["ResourceInfo"].resource_name) == ("model", "car/9")
    _, status = await _failed_status(address, "precondition")
    details = details_of(status)
    assert details["ErrorInfo"].reason == "FAILED_PRECONDITION"  # the class default
    assert details["PreconditionFailure"].violations[0].subject == "car-detector"
    assert details["BadRequest"].field_violations[0].field == "classes"


async def test_unexpected_fault_is_internal_with_reason(address: str) -> None:
    error, status = await _failed_status(address, "crash")
    assert error.code() == grpc.StatusCode.INTERNAL
    assert details_of(status)["ErrorInfo"].reason == "INTERNAL"


async def test_trailers_set_before_the_error_are_kept(address: str) -> None:
    error, status = await _failed_status(address, "trailer")
    assert ("x-kept", "yes") in tuple(error.trailing_metadata() or ())
    assert details_of(status)["ErrorInfo"].reason == "INVALID_ARGUMENT"


async def test_stream_error_carries_details(address: str) -> None:
    async with insecure_channel(address) as channel:
        stub = detector_pb2_grpc.DetectorServiceStub(channel)
        reqs = [detector_pb2.DetectStreamRequest(detect=detector_pb2.DetectRequest(request_id=i)) for i in ("a", "bad")]
        call = stub.DetectStream(iter(reqs))
        assert (await call.read()).request_id == "a"
        with pytest.raises(grpc.aio.AioRpcError):
            await call.read()
        status = await rpc_status.aio.from_call(call)
        assert status is not None
        details = details_of(status)
        assert details["ErrorInfo"].reason == "INVALID_IMAGE"
        assert details["BadRequest"].field_violations[0].field == "detect.image"


def test_retry_delay_rounds_up_to_the_millisecond() -> None:
    assert retry_delay(0.0001).ToMilliseconds() == 1
    assert retry_delay(1.2341).ToMilliseconds() == 1235
    assert retry_delay(2.0).ToTimedelta().total_seconds() == 2.0
