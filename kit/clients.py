"""Client-side helpers: channels with the project's limits, and waiting for health."""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kit.server import channel_options


def insecure_channel(target: str, max_message_bytes: int = 64 * 1024 * 1024) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=channel_options(max_message_bytes))


async def check_health(channel: grpc.aio.Channel, service: str = "", timeout_s: float = 1.0) -> bool:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    except grpc.aio.AioRpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def wait_serving(target: str, timeout_s: float, service: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    async with insecure_channel(target) as channel:
        while time.monotonic() < deadline:
            if await check_health(channel, service):
                return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{target} not SERVING after {timeout_s:.0f}s")
