"""Rich error details through the gateway (a real process): an upstream's google.rpc.Status
(ErrorInfo, BadRequest, and detail types the gateway does not know) reaches the client
unchanged for unary, client-streaming and server-streaming calls; the gateway's own refusals
carry an ErrorInfo reason; a rate-limited call carries RetryInfo, read with grpc_status."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import wrappers_pb2
from google.rpc import status_pb2
from grpc_status import rpc_status

from carmesh.v1 import detector_pb2, detector_pb2_grpc, registry_pb2, registry_pb2_grpc
from kit.errors import DOMAIN
from tests.gateway.probe import RICH_ERROR_NAME, ProbeServer, rich_status
from tests.gateway.support import ADMIN_KEY, DETECT_KEY, READER_KEY, bearer, run_gateway
from tests.status_details import details_of

DETAILS_KEY = "grpc-status-details-bin"


def registry(channel: grpc.Channel) -> registry_pb2_grpc.RegistryServiceStub:
    return registry_pb2_grpc.RegistryServiceStub(channel)


def status_of(error: grpc.RpcError) -> status_pb2.Status:
    """The rich status of a failed call, checked by grpc_status against the call's code and message."""
    assert isinstance(error, grpc.Call)
    status = rpc_status.from_call(error)
    assert status is not None, f"no {DETAILS_KEY} trailer: {error.trailing_metadata()}"
    return status


def assert_passed_unchanged(error: grpc.RpcError, method: str) -> None:
    sent = rich_status(method)
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == sent.message
    [trailer] = [value for key, value in error.trailing_metadata() or () if key == DETAILS_KEY]
    assert status_pb2.Status.FromString(trailer) == sent
    status = status_of(error)
    details = details_of(status)
    assert details["ErrorInfo"].reason == "INVALID_VERSION"
    assert dict(details["ErrorInfo"].metadata) == {"method": method, "upstream": "probe"}
    assert [(v.field, v.description) for v in details["BadRequest"].field_violations] == [("version", "not a number")]
    # A detail type the gateway knows nothing about arrives too.
    extension = wrappers_pb2.StringValue()
    assert status.details[2].Unpack(extension) and extension.value == "an extension detail"


def test_upstream_details_pass_through_a_unary_call(channel):
    request = registry_pb2.GetModelVersionRequest(name=RICH_ERROR_NAME, version="x")
    with pytest.raises(grpc.RpcError) as err:
        registry(channel).GetModelVersion(request, metadata=bearer(ADMIN_KEY), timeout=10)
    assert_passed_unchanged(err.value, "GetModelVersion")


def test_upstream_details_pass_through_a_client_stream(channel):
    meta = registry_pb2.ImportModelRequest(metadata=registry_pb2.ImportModelMetadata(name=RICH_ERROR_NAME))
    chunk = registry_pb2.ImportModelRequest(chunk=b"\x00" * 100)
    with pytest.raises(grpc.RpcError) as err:
        registry(channel).ImportModel(iter([meta, chunk]), metadata=bearer(ADMIN_KEY), timeout=10)
    assert_passed_unchanged(err.value, "ImportModel")


def test_upstream_details_pass_through_a_server_stream_after_its_first_message(channel):
    stream = registry(channel).DownloadModel(
        registry_pb2.DownloadModelRequest(name=RICH_ERROR_NAME), metadata=bearer(ADMIN_KEY), timeout=10
    )
    first = next(stream)
    assert first.version.name == RICH_ERROR_NAME
    with pytest.raises(grpc.RpcError) as err:
        list(stream)
    assert_passed_unchanged(err.value, "DownloadModel")


def test_an_upstream_error_without_details_gets_none_added(channel):
    request = registry_pb2.GetModelVersionRequest(name="missing", version="1")
    with pytest.raises(grpc.RpcError) as err:
        registry(channel).GetModelVersion(request, metadata=bearer(ADMIN_KEY), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert rpc_status.from_call(err.value) is None


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "MISSING_CREDENTIALS"),
        (bearer("not-a-known-key-0123456789"), "UNKNOWN_API_KEY"),
        (bearer(DETECT_KEY), "SCOPE_DENIED"),
    ],
)
def test_gateway_refusals_carry_a_reason(channel, metadata, reason):
    with pytest.raises(grpc.RpcError) as err:
        registry(channel).ListModels(registry_pb2.ListModelsRequest(), metadata=metadata, timeout=10)
    info = details_of(status_of(err.value))["ErrorInfo"]
    assert (info.reason, info.domain) == (reason, DOMAIN)


def test_rate_limited_call_carries_retry_info(keys_file):
    # Its own upstream, so that the module's gateway and probe keep no state from this test.
    probe = ProbeServer("rate-limited")
    # One token per 1000 s after a burst of 2: the third call is refused whatever the timing.
    args = ("--rate-limit-rps", "0.001", "--rate-limit-burst", "2")
    try:
        with run_gateway(keys_file, probe.address, None, *args) as gateway, grpc.insecure_channel(gateway.address) as c:
            for _ in range(2):
                registry(c).ListModels(registry_pb2.ListModelsRequest(), metadata=bearer(READER_KEY), timeout=10)
            with pytest.raises(grpc.RpcError) as err:
                registry(c).ListModels(registry_pb2.ListModelsRequest(), metadata=bearer(READER_KEY), timeout=10)
    finally:
        probe.stop()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = details_of(status_of(err.value))
    info = details["ErrorInfo"]
    assert (info.reason, info.domain) == ("RATE_LIMITED", DOMAIN)
    assert dict(info.metadata) == {"api_key": "reader", "rate_per_s": "0.001", "burst": "2"}
    # About 1000 s until the next token (less the moments since the bucket was filled).
    delay_s = details["RetryInfo"].retry_delay.ToTimedelta().total_seconds()
    assert 990 < delay_s <= 1000


def test_no_healthy_upstream_says_which_service(channel):
    # No detector replica runs behind this module's gateway.
    stub = detector_pb2_grpc.DetectorServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModelInfo(detector_pb2.GetModelInfoRequest(), metadata=bearer(DETECT_KEY), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    info = details_of(status_of(err.value))["ErrorInfo"]
    assert info.reason == "NO_HEALTHY_UPSTREAM"
    assert dict(info.metadata) == {"service": "carmesh.v1.DetectorService", "replicas": "1"}
