"""The kit server maps domain errors to status codes, survives crashes in handlers,
serves health and reflection, counts RPCs, and drains on stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from carmesh.v1 import detector_pb2, detector_pb2_grpc
from kit.clients import insecure_channel
from kit.errors import InvalidArgument, ResourceExhausted
from kit.metrics import Metrics
from kit.server import Server
from tests.support import eventually_async


class Servicer(detector_pb2_grpc.DetectorServiceServicer):
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.slow_started = asyncio.Event()

    async def Detect(self, request: detector_pb2.DetectRequest, context: Any) -> detector_pb2.DetectResponse:
        if request.request_id == "bad":
            raise InvalidArgument("image is empty; send JPEG or PNG bytes")
        if request.request_id == "full":
            raise ResourceExhausted("queue full")
        if request.request_id == "crash":
            raise ZeroDivisionError("boom")
        if request.request_id == "slow":
            self.slow_started.set()
            await self.release.wait()
        return detector_pb2.DetectResponse(request_id=request.request_id)

    async def DetectStream(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[detector_pb2.DetectStreamResponse]:
        async for item in request_iterator:
            if item.detect.request_id == "bad":
                raise InvalidArgument("bad item")
            yield detector_pb2.DetectStreamResponse(request_id=item.detect.request_id)


@pytest.fixture
async def running() -> AsyncIterator[tuple[Server, Servicer, Metrics]]:
    metrics = Metrics("test")
    server = Server(
        host="127.0.0.1",
        port=0,
        service_names=["carmesh.v1.DetectorService"],
        metrics=metrics,
        max_message_bytes=1 << 20,
    )
    servicer = Servicer()
    detector_pb2_grpc.add_DetectorServiceServicer_to_server(servicer, server.server)
    await server.start()
    await server.set_serving(True)
    yield server, servicer, metrics
    servicer.release.set()
    await server.stop(1.0)


async def test_errors_map_to_codes_and_server_survives(running: tuple[Server, Servicer, Metrics]) -> None:
    server, _, metrics = running
    async with insecure_channel(server.address) as channel:
        stub = detector_pb2_grpc.DetectorServiceStub(channel)
        for request_id, code, text in [
            ("bad", grpc.StatusCode.INVALID_ARGUMENT, "image is empty"),
            ("full", grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"),
            ("crash", grpc.StatusCode.INTERNAL, "ZeroDivisionError"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Detect(detector_pb2.DetectRequest(request_id=request_id))
            assert err.value.code() == code
            assert text in (err.value.details() or "")
        ok = await stub.Detect(detector_pb2.DetectRequest(request_id="fine"))
        assert ok.request_id == "fine"
    total = metrics.registry.get_sample_value(
        "carmesh_rpc_total", {"service": "test", "method": "/carmesh.v1.DetectorService/Detect", "code": "INTERNAL"}
    )
    assert total == 1.0


async def test_stream_errors_map_to_codes(running: tuple[Server, Servicer, Metrics]) -> None:
    server, _, _ = running
    async with insecure_channel(server.address) as channel:
        stub = detector_pb2_grpc.DetectorServiceStub(channel)
        reqs = [detector_pb2.DetectStreamRequest(detect=detector_pb2.DetectRequest(request_id=i)) for i in ("a", "bad")]
        call = stub.DetectStream(iter(reqs))
        first = await call.read()
        assert first.request_id == "a"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_and_reflection(running: tuple[Server, Servicer, Metrics]) -> None:
    server, _, _ = running
    async with insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "carmesh.v1.DetectorService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        reply = await call.read()
        names = {s.name for s in reply.list_services_response.service}
        assert {"carmesh.v1.DetectorService", "grpc.health.v1.Health"} <= names


async def test_stop_reports_not_serving_and_drains_in_flight(running: tuple[Server, Servicer, Metrics]) -> None:
    server, servicer, _ = running
    async with insecure_channel(server.address) as channel:
        stub = detector_pb2_grpc.DetectorServiceStub(channel)
        in_flight = asyncio.ensure_future(stub.Detect(detector_pb2.DetectRequest(request_id="slow")))
        await asyncio.wait_for(servicer.slow_started.wait(), timeout=10)
        health = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await health.read()).status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.ensure_future(server.stop(5.0))
        assert (await health.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        health.cancel()

        async def refuses_new_calls() -> bool:
            try:
                await stub.Detect(detector_pb2.DetectRequest(request_id="late"), timeout=1)
            except grpc.aio.AioRpcError as refused:
                return refused.code() == grpc.StatusCode.UNAVAILABLE
            return False

        await eventually_async(refuses_new_calls, what="the stopping server to refuse new calls", timeout_s=10)
        assert not in_flight.done()
        servicer.release.set()
        reply = await in_flight
        assert reply.request_id == "slow"
        await stopping
