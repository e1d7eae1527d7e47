"""The gateway (a real process) in front of a recording upstream: forwarding of all streaming
kinds, metadata, deadlines, errors, cancellation, auth, health and reflection."""

from __future__ import annotations

import hashlib
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from carmesh.v1 import registry_pb2, registry_pb2_grpc
from tests.gateway.probe import ProbeServer
from tests.gateway.support import ADMIN_KEY, DETECT_KEY, READER_KEY, WRITER_KEY, bearer, metrics_port, run_gateway
from tests.helpers import free_port
from tests.support import eventually

# gRPC encodes a deadline on the wire as a rounded-up timeout: the upstream may see a bit more.
WIRE_SLACK_S = 0.5


def registry(channel: grpc.Channel) -> registry_pb2_grpc.RegistryServiceStub:
    return registry_pb2_grpc.RegistryServiceStub(channel)


def test_unary_call_reaches_upstream_with_metadata_but_without_credentials(channel, probe):
    metadata = (*bearer(ADMIN_KEY), ("x-request-id", "req-42"), ("x-trace-bin", b"\x00\x01\x02"))
    reply = registry(channel).ListModels(registry_pb2.ListModelsRequest(), metadata=metadata, timeout=10)
    assert [m.name for m in reply.models] == ["probe-registry"]
    seen = probe.registry.calls[-1]
    assert seen.method == "ListModels"
    assert seen.metadata["x-request-id"] == "req-42"
    assert seen.metadata["x-trace-bin"] == b"\x00\x01\x02"
    assert seen.metadata["x-carmesh-caller"] == "admin"
    assert seen.metadata["x-carmesh-caller-scopes"] == "*"
    assert "authorization" not in seen.metadata


def test_clients_cannot_claim_another_callers_name_or_scopes(channel, probe):
    # The ingestor files a client's labels under this name and checks `ingest.labels` in these scopes.
    forged = (*bearer(READER_KEY), ("x-carmesh-caller", "admin"), ("x-carmesh-caller-scopes", "*"))
    registry(channel).ListModels(registry_pb2.ListModelsRequest(), metadata=forged, timeout=10)
    seen = [(k, v) for k, v in probe.registry.calls[-1].entries if k.startswith("x-carmesh-caller")]
    assert sorted(seen) == [("x-carmesh-caller", "reader"), ("x-carmesh-caller-scopes", "registry.read")]


def test_client_deadline_is_propagated_upstream(channel, probe):
    registry(channel).ListModels(registry_pb2.ListModelsRequest(), metadata=bearer(ADMIN_KEY), timeout=3)
    remaining = probe.registry.calls[-1].time_remaining_s
    assert remaining is not None
    assert 0 < remaining <= 3 + WIRE_SLACK_S  # not the gateway's default of 40 s


def test_gateway_default_deadline_applies_when_client_sets_none(channel, probe):
    registry(channel).ListModels(registry_pb2.ListModelsRequest(), metadata=bearer(ADMIN_KEY))
    remaining = probe.registry.calls[-1].time_remaining_s
    assert remaining is not None
    assert 3 < remaining <= 40 + WIRE_SLACK_S  # the gateway runs with --default-deadline-s 40


def test_upstream_status_details_and_trailers_pass_through(channel):
    with pytest.raises(grpc.RpcError) as err:
        registry(channel).GetModelVersion(
            registry_pb2.GetModelVersionRequest(name="missing", version="1"), metadata=bearer(ADMIN_KEY), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "registered model 'missing' not found"
    assert ("x-probe-reason", "no-such-model") in tuple(err.value.trailing_metadata())


def test_upstream_unavailable_from_the_daemon_itself_keeps_its_details(channel):
    with pytest.raises(grpc.RpcError) as err:
        registry(channel).GetModelVersion(
            registry_pb2.GetModelVersionRequest(name="busy", version="1"), metadata=bearer(ADMIN_KEY), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert err.value.details() == "registry is busy, try again"


def test_client_streaming_is_forwarded_byte_for_byte(channel):
    chunks = [bytes([i]) * (1000 + i) for i in range(5)]
    meta = registry_pb2.ImportModelMetadata(name="car-detector", class_names=["car", "truck"])
    requests = [registry_pb2.ImportModelRequest(metadata=meta)] + [
        registry_pb2.ImportModelRequest(chunk=chunk) for chunk in chunks
    ]
    reply = registry(channel).ImportModel(iter(requests), metadata=bearer(WRITER_KEY), timeout=10)
    assert reply.version.sha256 == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert reply.version.size_bytes == sum(len(c) for c in chunks)
    assert list(reply.version.class_names) == ["car", "truck"]


def test_server_streaming_is_forwarded(channel, probe):
    replies = list(
        registry(channel).DownloadModel(
            registry_pb2.DownloadModelRequest(name="car-detector", chunk_size_bytes=5),
            metadata=bearer(READER_KEY),
            timeout=10,
        )
    )
    assert replies[0].version.name == "car-detector"
    assert [len(r.chunk) for r in replies[1:]] == [1000] * 5
    # Streaming responses keep the client's deadline rather than the gateway default.
    assert probe.registry.calls[-1].time_remaining_s <= 10 + WIRE_SLACK_S


def test_client_cancel_cancels_the_upstream_call(channel, probe):
    probe.registry.watch_cancelled.clear()
    stream = registry(channel).WatchAlias(
        registry_pb2.WatchAliasRequest(name="car-detector", alias="champion"), metadata=bearer(READER_KEY)
    )
    first = next(stream)
    assert first.version.name == "car-detector"
    # A watch without a client deadline gets the gateway's stream lifetime (default 1 h) upstream.
    remaining = probe.registry.calls[-1].time_remaining_s
    # (The sync server reports long deadlines a few seconds long, so the bound is loose.)
    assert remaining is not None and 3500 < remaining < 3700
    assert probe.registry.watch_started.wait(10)
    assert not probe.registry.watch_cancelled.is_set()
    stream.cancel()
    assert probe.registry.watch_cancelled.wait(10), "the upstream WatchAlias was not cancelled"


@pytest.mark.parametrize(
    ("metadata", "code", "words"),
    [
        ((), grpc.StatusCode.UNAUTHENTICATED, "missing API key"),
        ((("authorization", "Basic abc"),), grpc.StatusCode.UNAUTHENTICATED, "malformed"),
        (bearer("not-a-known-key-0123456789"), grpc.StatusCode.UNAUTHENTICATED, "unknown API key"),
        (bearer(DETECT_KEY), grpc.StatusCode.PERMISSION_DENIED, "lacks scope 'registry.read'"),
    ],
)
def test_calls_without_a_fitting_key_are_refused(channel, probe, metadata, code, words):
    calls_before = len(probe.registry.calls)
    with pytest.raises(grpc.RpcError) as err:
        registry(channel).ListModels(registry_pb2.ListModelsRequest(), metadata=metadata, timeout=10)
    assert err.value.code() == code
    assert words in err.value.details()
    assert len(probe.registry.calls) == calls_before  # refused at the door, never forwarded


def test_streaming_calls_are_refused_the_same_way(channel, probe):
    calls_before = len(probe.registry.calls)
    with pytest.raises(grpc.RpcError) as err:
        list(registry(channel).DownloadModel(registry_pb2.DownloadModelRequest(name="m"), timeout=10))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    meta = registry_pb2.ImportModelRequest(metadata=registry_pb2.ImportModelMetadata(name="m"))
    with pytest.raises(grpc.RpcError) as err:
        registry(channel).ImportModel(iter([meta]), metadata=bearer(READER_KEY), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert len(probe.registry.calls) == calls_before


def test_read_scope_cannot_write(channel, probe):
    request = registry_pb2.SetAliasRequest(name="car-detector", alias="champion", version="1")
    with pytest.raises(grpc.RpcError) as err:
        registry(channel).SetAlias(request, metadata=bearer(READER_KEY), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "registry.write" in err.value.details()
    assert READER_KEY not in err.value.details()


def test_health_is_open_and_per_service(channel, probe):
    health = health_pb2_grpc.HealthStub(channel)

    def status(service: str) -> int:
        return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    assert status("") == health_pb2.HealthCheckResponse.SERVING
    assert status("carmesh.v1.RegistryService") == health_pb2.HealthCheckResponse.SERVING
    # No detector replica is running behind this gateway.
    assert status("carmesh.v1.DetectorService") == health_pb2.HealthCheckResponse.NOT_SERVING
    probe.set_serving(False)
    try:
        eventually(
            lambda: status("carmesh.v1.RegistryService") == health_pb2.HealthCheckResponse.NOT_SERVING,
            what="RegistryService NOT_SERVING once its only replica is",
            timeout_s=15,
        )
        with pytest.raises(grpc.RpcError) as err:
            registry(channel).ListModels(registry_pb2.ListModelsRequest(), metadata=bearer(ADMIN_KEY), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no healthy registry replica (of 1)" in err.value.details()
    finally:
        probe.set_serving(True)
    eventually(
        lambda: status("carmesh.v1.RegistryService") == health_pb2.HealthCheckResponse.SERVING,
        what="RegistryService SERVING again",
        timeout_s=15,
    )


def test_reflection_lists_and_describes_the_proxied_services(channel):
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"carmesh.v1.DetectorService", "carmesh.v1.RegistryService", "grpc.health.v1.Health"} <= services
    assert "carmesh.v1.TrainingService" not in services  # not configured behind this gateway
    described = database.FindFileContainingSymbol("carmesh.v1.DetectorService")
    assert described.name == "carmesh/v1/detector.proto"
    assert "Detect" in [m.name for m in described.service[0].method]


def test_metrics_count_forwarded_and_refused_calls(gateway, channel, probe):
    registry(channel).ListModels(registry_pb2.ListModelsRequest(), metadata=bearer(ADMIN_KEY), timeout=10)
    with pytest.raises(grpc.RpcError):
        registry(channel).ListModels(registry_pb2.ListModelsRequest(), timeout=10)
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port(gateway)}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    wanted = (
        f'carmesh_gateway_upstream_calls_total{{code="OK",service="carmesh.v1.RegistryService",'
        f'upstream="{probe.address}"}}'
    )
    assert wanted in text
    assert 'carmesh_gateway_rejected_total{reason="unauthenticated"}' in text
    assert 'carmesh_gateway_calls_by_key_total{key="admin",service="carmesh.v1.RegistryService"}' in text
    assert ADMIN_KEY not in text
    assert ADMIN_KEY not in gateway.log() and READER_KEY not in gateway.log()


def test_upstream_down_gives_unavailable_naming_the_service(keys_file):
    with run_gateway(keys_file, f"127.0.0.1:{free_port()}") as gateway, grpc.insecure_channel(gateway.address) as chan:
        with pytest.raises(grpc.RpcError) as err:
            registry(chan).ListModels(registry_pb2.ListModelsRequest(), metadata=bearer(ADMIN_KEY), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "carmesh.v1.RegistryService" in err.value.details()


def test_upstream_that_dies_gives_unavailable_naming_the_service(keys_file):
    probe = ProbeServer("short-lived")
    with run_gateway(keys_file, probe.address) as gateway, grpc.insecure_channel(gateway.address) as chan:
        stub = registry(chan)
        stub.ListModels(registry_pb2.ListModelsRequest(), metadata=bearer(ADMIN_KEY), timeout=10)
        probe.stop()
        with pytest.raises(grpc.RpcError) as err:
            stub.ListModels(registry_pb2.ListModelsRequest(), metadata=bearer(ADMIN_KEY), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "carmesh.v1.RegistryService" in err.value.details()
        assert "registry" in err.value.details()


def test_rate_limit_per_key_with_retry_hint(keys_file, probe):
    # One token per 1000 s after a burst of 2: the third call is refused whatever the timing.
    args = ("--rate-limit-rps", "0.001", "--rate-limit-burst", "2")
    with run_gateway(keys_file, probe.address, None, *args) as gateway, grpc.insecure_channel(gateway.address) as chan:
        stub = registry(chan)
        for _ in range(2):
            stub.ListModels(registry_pb2.ListModelsRequest(), metadata=bearer(READER_KEY), timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            stub.ListModels(registry_pb2.ListModelsRequest(), metadata=bearer(READER_KEY), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "'reader'" in err.value.details()
        assert "retry in" in err.value.details()
        retry_ms = dict(err.value.trailing_metadata())["retry-after-ms"]
        assert int(retry_ms) > 0
        # Another key has its own bucket.
        stub.ListModels(registry_pb2.ListModelsRequest(), metadata=bearer(ADMIN_KEY), timeout=10)


def test_oversized_message_is_refused_by_grpc(keys_file, probe):
    args = ("--max-message-bytes", "65536")
    with run_gateway(keys_file, probe.address, None, *args) as gateway, grpc.insecure_channel(gateway.address) as chan:
        stub = registry(chan)
        small = registry_pb2.GetModelVersionRequest(name="x" * 1000, version="1")
        assert stub.GetModelVersion(small, metadata=bearer(ADMIN_KEY), timeout=10).version.name == "x" * 1000
        big = registry_pb2.GetModelVersionRequest(name="x" * 100_000, version="1")
        with pytest.raises(grpc.RpcError) as err:
            stub.GetModelVersion(big, metadata=bearer(ADMIN_KEY), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_no_auth_mode_admits_calls_without_a_key(keys_file, probe):
    with (
        run_gateway(keys_file, probe.address, None, "--no-auth-required") as gateway,
        grpc.insecure_channel(gateway.address) as chan,
    ):
        reply = registry(chan).ListModels(registry_pb2.ListModelsRequest(), timeout=10)
        assert [m.name for m in reply.models] == ["probe-registry"]
        assert probe.registry.calls[-1].metadata["x-carmesh-caller"] == "anonymous"
        # A wrong key is still an error rather than silently anonymous.
        with pytest.raises(grpc.RpcError) as err:
            registry(chan).ListModels(registry_pb2.ListModelsRequest(), metadata=bearer("wrong-key-0123456789"))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
