"""grpc/grpc#36066: a server that ends a client stream early must be heard, not replaced by INTERNAL."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from typing import Any

import grpc

from kit.grpc_compat import keep_server_status_on_failed_writes

CALLS = 300  # without the workaround ~4% of these end INTERNAL here: P(none of 300) is about 1e-5


async def _reject_first(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    async for _ in requests:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad first message")
    return b""


async def test_a_stream_the_server_rejects_early_keeps_the_servers_status() -> None:
    assert keep_server_status_on_failed_writes()
    assert keep_server_status_on_failed_writes()  # idempotent
    server = grpc.aio.server()
    handler = grpc.stream_unary_rpc_method_handler(_reject_first)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Upload", {"Send": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    codes: collections.Counter[str] = collections.Counter()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            send: Any = channel.stream_unary("/t.Upload/Send")

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(64):
                    yield b"x" * 65536

            for _ in range(CALLS):
                try:
                    await send(chunks(), timeout=10)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    codes[f"{exc.code().name}: {exc.details()}"] += 1
    finally:
        await server.stop(0)
    assert codes == {"INVALID_ARGUMENT: bad first message": CALLS}
