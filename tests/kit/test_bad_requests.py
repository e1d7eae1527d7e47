"""Requests that do not parse (invalid UTF-8 in a string field, bytes that are not protobuf)
are the client's fault: INVALID_ARGUMENT with a message that names the message type, never
INTERNAL or UNKNOWN, on unary and streaming calls alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from carmesh.v1 import detector_pb2, detector_pb2_grpc
from kit.clients import insecure_channel
from kit.server import Server
from tests.kit.support import detector_server

# DetectRequest.request_id (field 6, wire type 2) holding the invalid UTF-8 bytes ff fe.
_BAD_UTF8 = bytes([(6 << 3) | 2, 2, 0xFF, 0xFE])
# A length-delimited field whose length runs past the end of the message.
_TRUNCATED = bytes([(1 << 3) | 2, 50, 1, 2, 3])


class Servicer(detector_pb2_grpc.DetectorServiceServicer):
    async def Detect(self, request: detector_pb2.DetectRequest, context: Any) -> detector_pb2.DetectResponse:
        return detector_pb2.DetectResponse(request_id=request.request_id)

    async def DetectStream(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[detector_pb2.DetectStreamResponse]:
        async for item in request_iterator:
            yield detector_pb2.DetectStreamResponse(request_id=item.detect.request_id)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with detector_server(Servicer()) as server:
        yield server


@pytest.mark.parametrize("raw", [_BAD_UTF8, _TRUNCATED], ids=["invalid-utf8", "truncated"])
async def test_unparsable_unary_request_is_invalid_argument(server: Server, raw: bytes) -> None:
    async with insecure_channel(server.address) as channel:
        call = channel.unary_unary("/carmesh.v1.DetectorService/Detect")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(raw, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert "carmesh.v1.DetectRequest" in (err.value.details() or "")
        # The server still answers a good request afterwards.
        good = detector_pb2.DetectRequest(request_id="ok").SerializeToString()
        assert detector_pb2.DetectResponse.FromString(await call(good, timeout=10)).request_id == "ok"


async def test_unparsable_stream_item_is_invalid_argument(server: Server) -> None:
    good = detector_pb2.DetectStreamRequest(detect=detector_pb2.DetectRequest(request_id="a")).SerializeToString()
    # DetectStreamRequest.detect (field 1) wrapping the bad DetectRequest.
    bad = bytes([(1 << 3) | 2, len(_BAD_UTF8)]) + _BAD_UTF8
    async with insecure_channel(server.address) as channel:
        call = channel.stream_stream("/carmesh.v1.DetectorService/DetectStream")(iter([good, bad]), timeout=10)
        replies = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for reply in call:
                replies.append(reply)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert "request #1" in (err.value.details() or "")
        assert len(replies) == 1


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (detector_pb2.DetectRequest(request_id="a\x00b"), "request_id"),
        (detector_pb2.DetectRequest(classes=["car", "x\x00"]), "classes"),
    ],
    ids=["string", "repeated-string"],
)
async def test_nul_in_a_string_is_invalid_argument_naming_the_field(
    server: Server, request_: detector_pb2.DetectRequest, field: str
) -> None:
    # Found by the fuzz suite: a NUL in a snapshot name reached PostgreSQL and came back INTERNAL.
    async with insecure_channel(server.address) as channel:
        stub = detector_pb2_grpc.DetectorServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Detect(request_, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert f"{field} contains a NUL character" in (err.value.details() or "")
        stream = stub.DetectStream(iter([detector_pb2.DetectStreamRequest(detect=request_)]), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stream:
                pass
        assert f"detect.{field} contains a NUL character" in (err.value.details() or "")
