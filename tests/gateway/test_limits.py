"""Limits against exhaustion at the gateway (issue 16, hole 6), each on a gateway process of its
own: concurrent calls and streams per key, client-stream pacing, per-peer back-off after failed
authentication, the stream lifetime; plus the pure logic of the back-off and of peer addresses."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest

from carmesh.v1 import registry_pb2, registry_pb2_grpc
from gateway.errors import TooManyFailedAuthentications
from gateway.limits import AuthBackoff, peer_host
from kit.errors import DOMAIN
from tests.gateway.probe import ProbeServer
from tests.gateway.support import ADMIN_KEY, READER_KEY, WRITER_KEY, bearer, run_gateway
from tests.gateway.test_rich_errors import status_of
from tests.status_details import details_of
from tests.support import eventually

WRONG_KEY = "wrong-key-0123456789abcdef"


@contextmanager
def gateway_stub(keys_file, *args: str) -> Iterator[tuple[registry_pb2_grpc.RegistryServiceStub, ProbeServer]]:
    """A gateway with ``args`` in front of a probe of its own, so no state leaks between tests."""
    probe = ProbeServer("limits")
    try:
        with run_gateway(keys_file, probe.address, None, *args) as gateway, grpc.insecure_channel(gateway.address) as c:
            yield registry_pb2_grpc.RegistryServiceStub(c), probe
    finally:
        probe.stop()


def watch(stub: registry_pb2_grpc.RegistryServiceStub, key: str) -> grpc.Future:
    """A WatchAlias stream through the gateway, open once its first message arrived."""
    stream = stub.WatchAlias(registry_pb2.WatchAliasRequest(name="m", alias="live"), metadata=bearer(key), timeout=60)
    assert next(stream).version.name == "m"
    return stream


def refusal(error: grpc.RpcError) -> tuple[grpc.StatusCode, str, float | None, dict[str, str]]:
    """Code, ErrorInfo reason, RetryInfo delay in seconds (None: none) and ErrorInfo metadata."""
    details = details_of(status_of(error))
    info = details["ErrorInfo"]
    assert info.domain == DOMAIN
    retry = details.get("RetryInfo")
    delay_s = retry.retry_delay.ToTimedelta().total_seconds() if retry is not None else None
    return error.code(), info.reason, delay_s, dict(info.metadata)


def test_the_stream_beyond_a_keys_cap_is_refused_with_retry_info(keys_file):
    with gateway_stub(keys_file, "--max-streams-per-key", "2") as (stub, _):
        streams = [watch(stub, READER_KEY) for _ in range(2)]
        with pytest.raises(grpc.RpcError) as err:
            watch(stub, READER_KEY)
        code, reason, delay_s, meta = refusal(err.value)
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_CONCURRENT_STREAMS")
        assert delay_s is not None and delay_s > 0
        assert meta == {"api_key": "reader", "max": "2"}
        assert "max_streams_per_key" in err.value.details()
        # Unary calls of the same key, and streams of other keys, are not held up.
        stub.ListModels(registry_pb2.ListModelsRequest(), metadata=bearer(READER_KEY), timeout=10)
        other = watch(stub, ADMIN_KEY)
        # A stream that ends frees its slot.
        streams.pop().cancel()
        streams.append(
            eventually(lambda: watch(stub, READER_KEY), what="a new stream once one ended", retry_on=(grpc.RpcError,))
        )
        for stream in (*streams, other):
            stream.cancel()


def test_the_call_beyond_a_keys_concurrency_cap_is_refused(keys_file):
    args = ("--max-concurrent-calls-per-key", "2", "--max-streams-per-key", "0")
    with gateway_stub(keys_file, *args) as (stub, probe):
        streams = [watch(stub, READER_KEY) for _ in range(2)]
        with pytest.raises(grpc.RpcError) as err:
            stub.ListModels(registry_pb2.ListModelsRequest(), metadata=bearer(READER_KEY), timeout=10)
        code, reason, delay_s, _ = refusal(err.value)
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_CONCURRENT_CALLS")
        assert delay_s is not None and delay_s > 0
        assert [call.method for call in probe.registry.calls] == ["WatchAlias", "WatchAlias"]  # never forwarded
        stub.ListModels(registry_pb2.ListModelsRequest(), metadata=bearer(ADMIN_KEY), timeout=10)
        for stream in streams:
            stream.cancel()
        eventually(
            lambda: stub.ListModels(registry_pb2.ListModelsRequest(), metadata=bearer(READER_KEY), timeout=10),
            what="calls admitted again once the streams ended",
            retry_on=(grpc.RpcError,),
        )


def test_client_stream_messages_are_paced_per_key(keys_file):
    # 5 messages at once, then 20 per second: 25 messages take at least (25 - 5) / 20 = 1 s.
    args = ("--stream-messages-per-s", "20", "--stream-messages-burst", "5")
    chunks = [bytes([index]) * 1000 for index in range(24)]
    meta = registry_pb2.ImportModelRequest(metadata=registry_pb2.ImportModelMetadata(name="paced"))
    messages = [meta, *(registry_pb2.ImportModelRequest(chunk=chunk) for chunk in chunks)]
    with gateway_stub(keys_file, *args) as (stub, _):
        started = time.monotonic()
        reply = stub.ImportModel(iter(messages), metadata=bearer(WRITER_KEY), timeout=30)
        elapsed_s = time.monotonic() - started
    # Slowed down, not refused: every byte arrived.
    assert reply.version.sha256 == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert elapsed_s >= 0.9, f"25 messages took {elapsed_s:.2f}s; the pace allows 20/s after a burst of 5"


def test_a_peer_that_keeps_failing_authentication_is_backed_off(keys_file):
    args = ("--auth-failures-before-backoff", "3", "--auth-backoff-s", "1", "--auth-backoff-max-s", "60")
    with gateway_stub(keys_file, *args) as (stub, probe):

        def list_models(key: str) -> registry_pb2.ListModelsResponse:
            return stub.ListModels(registry_pb2.ListModelsRequest(), metadata=bearer(key), timeout=10)

        for _ in range(3):
            with pytest.raises(grpc.RpcError) as err:
                list_models(WRONG_KEY)
            assert refusal(err.value)[:2] == (grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_API_KEY")
        # The third failure blocks this address for 1 s: even a good key is refused, unchecked.
        with pytest.raises(grpc.RpcError) as err:
            list_models(READER_KEY)
        code, reason, delay_s, meta = refusal(err.value)
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_FAILED_AUTHENTICATIONS")
        assert delay_s is not None and 0 < delay_s <= 1.0
        assert meta == {"failures": "3"}
        assert probe.registry.calls == []
        # Blocked calls do not count; once the block is over, the good key works.
        eventually(lambda: list_models(READER_KEY), what="the block to end", retry_on=(grpc.RpcError,))
        # The next failure inside the window blocks for twice as long.
        with pytest.raises(grpc.RpcError) as err:
            list_models(WRONG_KEY)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            list_models(ADMIN_KEY)
        code, reason, delay_s, _ = refusal(err.value)
        assert reason == "TOO_MANY_FAILED_AUTHENTICATIONS"
        assert delay_s is not None and 1.0 < delay_s <= 2.0


def test_a_stream_ends_at_the_gateways_lifetime_with_a_retryable_status(keys_file):
    with gateway_stub(keys_file, "--max-stream-lifetime-s", "1") as (stub, probe):
        started = time.monotonic()
        stream = watch(stub, READER_KEY)
        with pytest.raises(grpc.RpcError) as err:
            next(stream)
        elapsed_s = time.monotonic() - started
        code, reason, delay_s, meta = refusal(err.value)
        assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "STREAM_LIFETIME_EXCEEDED")
        assert delay_s is not None and meta == {"max_stream_lifetime_s": "1"}
        assert 0.9 <= elapsed_s < 30
        assert probe.registry.watch_cancelled.wait(10), "the upstream watch was not ended"
        # A client deadline shorter than the lifetime is the client's own: DEADLINE_EXCEEDED as before.
        short = stub.WatchAlias(
            registry_pb2.WatchAliasRequest(name="m", alias="live"), metadata=bearer(READER_KEY), timeout=0.5
        )
        with pytest.raises(grpc.RpcError) as err:
            list(short)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_backoff_doubles_is_capped_and_is_forgotten_after_a_quiet_window():
    clock = FakeClock()
    backoff = AuthBackoff(max_failures=2, window_s=60, base_s=1, max_s=4, clock=clock)

    def blocked_for_s(host: str) -> float:
        try:
            backoff.check(host)
        except TooManyFailedAuthentications as exc:
            assert exc.retry_after_s is not None
            return exc.retry_after_s
        return 0.0

    backoff.failed("10.0.0.1")
    assert blocked_for_s("10.0.0.1") == 0
    delays = []
    for _ in range(4):
        backoff.failed("10.0.0.1")
        delays.append(blocked_for_s("10.0.0.1"))
        clock.now_s += delays[-1]
    assert delays == [1, 2, 4, 4]
    assert blocked_for_s("10.0.0.2") == 0  # another address is not affected
    clock.now_s += 61  # a quiet window: the record is forgotten, the count starts again
    backoff.failed("10.0.0.1")
    assert blocked_for_s("10.0.0.1") == 0


def test_peer_hosts_drop_the_port_and_group_ipv6_by_64():
    assert peer_host("ipv4:192.0.2.7:51234") == "192.0.2.7"
    assert peer_host("ipv6:[2001:db8:1:2:aaaa::1]:443") == peer_host("ipv6:[2001:db8:1:2:bbbb::9]:80")
    assert peer_host("ipv6:[2001:db8:1:2::1]:443") != peer_host("ipv6:[2001:db8:1:3::1]:443")
    assert peer_host("unix:/tmp/socket") == "unix"
