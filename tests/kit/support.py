"""A kit Server with one DetectorService servicer on port 0, for tests of the server's own behaviour."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from carmesh.v1 import detector_pb2_grpc
from kit.metrics import Metrics
from kit.server import Server


@contextlib.asynccontextmanager
async def detector_server(servicer: detector_pb2_grpc.DetectorServiceServicer) -> AsyncIterator[Server]:
    server = Server(
        host="127.0.0.1",
        port=0,
        service_names=["carmesh.v1.DetectorService"],
        metrics=Metrics("test"),
        max_message_bytes=1 << 20,
    )
    detector_pb2_grpc.add_DetectorServiceServicer_to_server(servicer, server.server)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(1.0)
