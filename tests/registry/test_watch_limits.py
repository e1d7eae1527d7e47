"""WatchAlias against amplification (issue 16, hole 6), on a registry_gateway of its own and the
session's real MLflow: many streams cost one MLflow poll per model and round, unknown models are
refused before anything is polled, and the stream and alias caps answer RESOURCE_EXHAUSTED with
RetryInfo."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_status import rpc_status

from carmesh.v1 import registry_pb2 as pb
from carmesh.v1 import registry_pb2_grpc
from kit.clients import insecure_channel
from tests.helpers import DaemonProcess
from tests.registry.support import Gateway, gateway_args, import_messages, next_version, yolov8_file
from tests.registry.test_registry_gateway import scrape
from tests.status_details import details_of
from tests.support import eventually_async

Stub = registry_pb2_grpc.RegistryServiceStub
MAX_STREAMS = 40
MAX_ALIASES = 12
MODEL_ALIASES_OK = frozenset({"operation": "model_aliases", "outcome": "ok"}.items())


@pytest.fixture(scope="module")
def limited(mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    cache_dir = tmp_path_factory.mktemp("registry-cache")
    args = gateway_args(
        mlflow_uri, cache_dir, "--watch-max-streams", str(MAX_STREAMS), "--watch-max-aliases", str(MAX_ALIASES)
    )
    with DaemonProcess("registry_gateway", args, timeout_s=90) as daemon:
        assert daemon.metrics_port is not None
        yield Gateway(daemon, daemon.metrics_port, cache_dir, mlflow_uri)


@pytest.fixture
async def stub(limited: Gateway) -> AsyncIterator[Stub]:
    async with insecure_channel(limited.address) as channel:
        yield registry_pb2_grpc.RegistryServiceStub(channel)


async def model_with_alias(stub: Stub, tmp_path: Path) -> str:
    name = f"watch-{uuid.uuid4().hex[:10]}"
    data = yolov8_file(tmp_path / "m.onnx").read_bytes()
    await stub.ImportModel(import_messages(data, name))  # type: ignore[arg-type]
    await stub.SetAlias(pb.SetAliasRequest(name=name, alias="live", version="1"))
    return name


def metric(gateway: Gateway, name: str, **labels: str) -> float:
    return scrape(gateway).get((name, frozenset(labels.items())), 0.0)


async def no_watches(gateway: Gateway) -> None:
    await eventually_async(
        lambda: (
            metric(gateway, "carmesh_registry_watch_streams") == 0
            and metric(gateway, "carmesh_registry_watched_aliases") == 0
        ),
        what="no open watches",
    )


async def refused(stream: grpc.aio.UnaryStreamCall) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await asyncio.wait_for(stream.read(), timeout=60)
    return failed.value


async def test_many_watchers_of_one_model_cost_one_mlflow_poll_per_round(
    stub: Stub, limited: Gateway, tmp_path: Path
) -> None:
    name = await model_with_alias(stub, tmp_path)
    await no_watches(limited)
    # 30 streams on one alias and 8 on aliases nobody set, all of one model.
    aliases = ["live"] * 30 + [f"a{uuid.uuid4().hex[:8]}" for _ in range(8)]
    streams = [stub.WatchAlias(pb.WatchAliasRequest(name=name, alias=alias)) for alias in aliases]
    try:
        for alias, stream in zip(aliases, streams, strict=True):
            first = await next_version(stream)
            assert (first.version if first is not None else None) == ("1" if alias == "live" else None)
        assert metric(limited, "carmesh_registry_watched_aliases") == 9
        assert metric(limited, "carmesh_registry_watch_streams") == len(streams)

        def counts() -> tuple[float, float]:
            before = scrape(limited)
            return (
                before.get(("carmesh_registry_watch_polls_total", frozenset()), 0.0),
                before.get(("carmesh_registry_mlflow_calls_total", MODEL_ALIASES_OK), 0.0),
            )

        polls_before, calls_before = counts()
        await eventually_async(lambda: counts()[0] >= polls_before + 5, what="5 more poll rounds")
        polls_after, calls_after = counts()
        # One MLflow call per round for the one watched model (a round may be running at either scrape).
        rounds = polls_after - polls_before
        assert rounds - 1 <= calls_after - calls_before <= rounds + 1, (rounds, calls_after - calls_before)
        # Still live: a change reaches every watcher of the alias.
        await stub.DeleteAlias(pb.DeleteAliasRequest(name=name, alias="live"))
        for alias, stream in zip(aliases, streams, strict=True):
            if alias == "live":
                assert await next_version(stream) is None
    finally:
        for stream in streams:
            stream.cancel()
    await no_watches(limited)
    # Nobody watches: the poll loop stops.
    polls = metric(limited, "carmesh_registry_watch_polls_total")
    await asyncio.sleep(1.0)  # the sleep is the thing under test: 5 poll intervals pass without a poll
    assert metric(limited, "carmesh_registry_watch_polls_total") == polls


async def test_unknown_models_are_refused_before_anything_is_polled(stub: Stub, limited: Gateway) -> None:
    await no_watches(limited)
    polls = metric(limited, "carmesh_registry_watch_polls_total")
    for _ in range(20):
        name = f"nope-{uuid.uuid4().hex[:10]}"
        error = await refused(stub.WatchAlias(pb.WatchAliasRequest(name=name, alias="live")))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert f"registered model {name!r} not found" in (error.details() or "")
    # Refused at the door: no key was watched, no round polled.
    assert metric(limited, "carmesh_registry_watch_polls_total") == polls
    assert metric(limited, "carmesh_registry_watched_aliases") == 0


def retry_details(error: grpc.aio.AioRpcError) -> tuple[str, dict[str, str], float]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    details = details_of(status)
    delay_s = details["RetryInfo"].retry_delay.ToTimedelta().total_seconds()
    return details["ErrorInfo"].reason, dict(details["ErrorInfo"].metadata), delay_s


async def test_watches_beyond_the_caps_are_refused_with_retry_info(
    stub: Stub, limited: Gateway, tmp_path: Path
) -> None:
    name = await model_with_alias(stub, tmp_path)
    await no_watches(limited)
    streams = [stub.WatchAlias(pb.WatchAliasRequest(name=name, alias=f"a{i}")) for i in range(MAX_ALIASES)]
    try:
        for stream in streams:
            assert await next_version(stream) is None
        # One more alias is refused; one more stream on an alias watched already is not.
        error = await refused(stub.WatchAlias(pb.WatchAliasRequest(name=name, alias="one-too-many")))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        reason, meta, delay_s = retry_details(error)
        assert reason == "TOO_MANY_WATCHES" and meta == {"limit": "watch_max_aliases", "max": str(MAX_ALIASES)}
        assert delay_s > 0
        while len(streams) < MAX_STREAMS:
            streams.append(stub.WatchAlias(pb.WatchAliasRequest(name=name, alias="a0")))
            assert await next_version(streams[-1]) is None
        error = await refused(stub.WatchAlias(pb.WatchAliasRequest(name=name, alias="a0")))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        reason, meta, _ = retry_details(error)
        assert reason == "TOO_MANY_WATCHES" and meta == {"limit": "watch_max_streams", "max": str(MAX_STREAMS)}
        # A stream that ends makes room for another.
        streams.pop().cancel()

        async def one_more() -> bool:
            stream = stub.WatchAlias(pb.WatchAliasRequest(name=name, alias="a1"))
            streams.append(stream)
            return await next_version(stream) is None

        await eventually_async(one_more, what="room for a new watch", retry_on=(grpc.aio.AioRpcError,))
    finally:
        for stream in streams:
            stream.cancel()
    await no_watches(limited)
