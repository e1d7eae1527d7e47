"""A PostgreSQL outage is not bad data: the daemon retries the batch with backoff, commits
nothing and dead-letters nothing meanwhile, answers UNAVAILABLE, and catches up afterwards.
The outage is real: the daemon reaches PostgreSQL through a TCP relay that the test cuts."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest

from carmesh.v1 import feature_pb2, feature_pb2_grpc
from kit.clients import check_health, insecure_channel
from kit.kafka import FRAMES_TOPIC, ensure_topics
from tests.feature_service.support import (
    FRAMES_GROUP,
    ApolloFrame,
    FreshDatabase,
    Run,
    apollo_message,
    class_ids,
    committed_offsets,
    daemon_args,
    fetchval,
    metric,
    metric_sum,
    produce_frames,
)
from tests.helpers import DaemonProcess
from tests.support import eventually_async

pytestmark = pytest.mark.integration


class TcpRelay:
    """Forwards 127.0.0.1:port to a target port until cut; cutting drops every connection and refuses new ones."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0  # the first start picks one; a restart listens on it again
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def close(self) -> None:
        await self.cut()


def _via(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    # The test server asks for a password: keep the DSN's.
    userinfo = parts.username if parts.password is None else f"{parts.username}:{parts.password}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@127.0.0.1:{port}"))


async def test_postgres_outage_is_retried_not_dead_lettered(
    feature_db: FreshDatabase, redis_url: str, kafka_bootstrap: str, apollo: list[ApolloFrame], tmp_path: Path
) -> None:
    await ensure_topics(kafka_bootstrap)
    relay = TcpRelay(int(urlsplit(feature_db.dsn).port or 5432))
    await relay.start()
    run = Run.new("outage")
    ids = class_ids(apollo)
    messages = [apollo_message(run, f, i, ids) for i, f in enumerate(apollo[:10])]
    args = daemon_args(
        dsn=_via(feature_db.dsn, relay.port),
        redis_url=redis_url,
        kafka_bootstrap=kafka_bootstrap,
        blob_dir=tmp_path / "blobs",
    )

    async def stored(n: int) -> bool:
        return await fetchval(feature_db.dsn, "SELECT count(*) FROM frames WHERE dataset = $1", run.dataset) == n

    async def retrying() -> bool:
        return metric(metrics_port, "carmesh_feature_store_retries_total", consumer="frames") >= 2

    try:
        # The daemon blocks the loop while it starts; the relay must keep serving it meanwhile.
        proc = DaemonProcess("feature_service", args)
        await asyncio.to_thread(proc.start)
        assert proc.metrics_port is not None
        metrics_port = proc.metrics_port
        try:
            await produce_frames(kafka_bootstrap, messages[:5])
            await eventually_async(lambda: stored(5), what="5 frames stored before the outage", timeout_s=60)
            before = await committed_offsets(kafka_bootstrap, FRAMES_GROUP, FRAMES_TOPIC)

            await relay.cut()
            await produce_frames(kafka_bootstrap, messages[5:])
            await eventually_async(retrying, what="the batch retried while PostgreSQL is unreachable", timeout_s=60)
            assert await stored(5)
            assert await committed_offsets(kafka_bootstrap, FRAMES_GROUP, FRAMES_TOPIC) == before
            async with insecure_channel(proc.address) as channel:
                assert await check_health(channel)  # still serving, and saying why RPCs fail
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    stub = feature_pb2_grpc.FeatureServiceStub(channel)
                    await stub.ListDatasetSnapshots(feature_pb2.ListDatasetSnapshotsRequest())
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "PostgreSQL" in (info.value.details() or "")

            await relay.start()
            await eventually_async(lambda: stored(10), what="all 10 frames stored after the outage", timeout_s=60)
            after = await committed_offsets(kafka_bootstrap, FRAMES_GROUP, FRAMES_TOPIC)
            assert after != before
            assert metric(metrics_port, "carmesh_feature_frames_stored_total") == 10
            assert metric_sum(metrics_port, "carmesh_feature_frames_dlq_total") == 0
        except BaseException:
            sys.stderr.write(f"--- feature_service log ---\n{proc.log()[-6000:]}\n")
            raise
        finally:
            await asyncio.to_thread(proc.stop)
    finally:
        await relay.close()
