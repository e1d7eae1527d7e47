"""Backpressure when the broker goes away: the bounded buffer fills, clients get UNAVAILABLE,
the daemon keeps serving, and every accepted frame reaches the broker once it is back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from carmesh.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc
from devstack.procs import Process
from devstack.services import tansu_binary, tcp_open
from kit.clients import check_health, insecure_channel
from tests.helpers import DaemonProcess, free_port
from tests.ingestor.proxy import TcpProxy
from tests.ingestor.support import ingestor, jpeg, read_topic, small_apollo_frames, stamp, unique_topic
from tests.support import eventually_async

pytestmark = pytest.mark.e2e

OUTAGE_ARGS = ["--max-in-flight", "4", "--publish-wait-ms", "1000", "--retry-max-ms", "500", "--ack-wait-ms", "1500"]


@pytest.fixture
def broker_behind_proxy(tmp_path: Path) -> Iterator[tuple[str, TcpProxy]]:
    """A private Tansu that advertises a proxy's address, so cutting the proxy is an outage
    that keeps the broker's (in-memory) data."""
    broker_port = free_port()
    proxy = TcpProxy(broker_port).start()
    argv = [
        tansu_binary(),
        "broker",
        "--listener-url",
        f"tcp://127.0.0.1:{broker_port}",
        "--advertised-listener-url",
        f"tcp://127.0.0.1:{proxy.port}",
        "--storage-engine",
        "memory://tansu/",
    ]
    broker = Process("tansu-outage", argv, tmp_path, ready=lambda: tcp_open(broker_port))
    broker.start()
    try:
        broker.wait_ready()
        yield f"127.0.0.1:{proxy.port}", proxy
    finally:
        proxy.cut()
        broker.stop()


@pytest.fixture(scope="module")
def image(shared_dir: Path) -> bytes:
    return jpeg(small_apollo_frames(shared_dir, 1)[0])


async def frames(prefix: str, count: int, image: bytes) -> AsyncIterator[ingest_pb2.IngestFramesRequest]:
    for i in range(count):
        frame = common_pb2.Frame(frame_id=f"{prefix}-{i}", camera_id="cam-outage", seq=i, image=image)
        yield ingest_pb2.IngestFramesRequest(frame=frame)


async def test_outage_fills_the_buffer_then_unavailable_and_nothing_accepted_is_lost(
    broker_behind_proxy: tuple[str, TcpProxy], image: bytes
) -> None:
    bootstrap, proxy = broker_behind_proxy
    topic = unique_topic("outage")
    with ingestor(bootstrap, topic, *OUTAGE_ARGS) as daemon:
        async with insecure_channel(daemon.address) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            reply = await stub.IngestFrames(frames("before", 3, image), timeout=30)
            assert (reply.accepted, reply.acknowledged, reply.buffered) == (3, 3, 0)

            proxy.cut()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.IngestFrames(frames("during", 10, image), timeout=60)
            details = err.value.details() or ""
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, details
            assert "4 frames buffered; retry later" in details and "this stream: 0 frames acknowledged" in details

            # The daemon keeps serving: health, other RPCs, and a quick UNAVAILABLE for the next client.
            assert await check_health(channel)
            await stub.ListSources(ingest_pb2.ListSourcesRequest(), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as again:
                await stub.IngestFrames(frames("refused", 1, image), timeout=30)
            assert again.value.code() == grpc.StatusCode.UNAVAILABLE

            proxy.restore()
            accepted = {f"before-{i}" for i in range(3)} | {f"during-{i}" for i in range(4)}
            got = await read_topic(
                bootstrap,
                topic,
                lambda f: f.camera_id == "cam-outage",
                lambda kept: accepted <= {f.client_frame_id for f in kept},
                timeout_s=120,
            )
            ids = {f.client_frame_id for f in got}
            assert accepted <= ids
            assert not ids & ({f"during-{i}" for i in range(4, 10)} | {"refused-0"}), "refused frames were published"

            reply = await stub.IngestFrames(frames("after", 2, image), timeout=60)
            assert (reply.accepted, reply.acknowledged) == (2, 2)
        daemon.terminate()
        assert daemon.proc is not None and daemon.proc.wait(timeout=30) == 0


async def test_broker_unreachable_from_the_start(image: bytes, shared_dir: Path) -> None:
    closed = f"127.0.0.1:{free_port()}"
    args = ["--kafka-bootstrap", closed, "--no-kafka-idempotence", "--frames-topic", unique_topic("never")]
    args += ["--max-in-flight", "2", "--publish-wait-ms", "300", "--shutdown-grace-s", "2", "--metrics-port", "0"]
    args += ["--allowed-roots", str(shared_dir / "data")]
    daemon = DaemonProcess("ingestor", args, wait_for="port")
    with daemon:
        async with insecure_channel(daemon.address) as channel:
            assert not await check_health(channel), "SERVING without a broker"
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.IngestFrames(frames("x", 5, image), timeout=30)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"broker {closed} unreachable" in (err.value.details() or "")
            assert "2 frames buffered" in (err.value.details() or "")
            apollo = shared_dir / "data" / "apollo-cars"
            request = ingest_pb2.ImportDatasetRequest(format=ingest_pb2.DATASET_FORMAT_KITTI, path=str(apollo))
            with pytest.raises(grpc.aio.AioRpcError) as imported:
                _ = [p async for p in stub.ImportDataset(request, timeout=30)]
            assert imported.value.code() == grpc.StatusCode.UNAVAILABLE
            listed = await stub.ListSources(ingest_pb2.ListSourcesRequest(), timeout=10)
            assert list(listed.sources) == []
        daemon.terminate()
        assert daemon.proc is not None and daemon.proc.wait(timeout=30) == 0
    # Frames it could never deliver are reported, not dropped silently.
    assert "not acknowledged before shutdown" in daemon.log()


async def test_a_source_and_a_retrying_client_lose_nothing_over_an_outage(
    broker_behind_proxy: tuple[str, TcpProxy], shared_dir: Path, tmp_path: Path
) -> None:
    """Issue 19: a folder source and a client that re-sends every call not answered OK, across a
    broker outage: every file and every acknowledged client frame reaches the topic, each under
    one id, and the client saw UNAVAILABLE during the outage."""
    bootstrap, proxy = broker_behind_proxy
    topic, files, batches = unique_topic("outage-source"), 30, 10
    folder = tmp_path / "data" / "cam"
    folder.mkdir(parents=True)
    base = small_apollo_frames(shared_dir, 1)[0]
    for n in range(files):
        (folder / f"{n:03d}.jpg").write_bytes(jpeg(stamp(base, n)))
    args = ["--allowed-roots", str(tmp_path / "data"), "--state-dir", str(tmp_path / "state"), *OUTAGE_ARGS]
    acknowledged: set[str] = set()
    failures: list[grpc.StatusCode] = []

    async def client(stub: ingest_pb2_grpc.IngestServiceStub) -> None:
        for b in range(batches):
            while True:
                try:
                    reply = await stub.IngestFrames(frames(f"c{b}", 3, jpeg(stamp(base, 1000 + b))), timeout=30)
                except grpc.aio.AioRpcError as exc:
                    failures.append(exc.code())
                    await asyncio.sleep(0.3)
                    continue
                assert (reply.acknowledged, reply.buffered) == (3, 0), reply
                acknowledged.update(f"c{b}-{i}" for i in range(3))
                await asyncio.sleep(0.3)
                break

    with ingestor(bootstrap, topic, *args) as daemon:
        async with insecure_channel(daemon.address) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            spec = ingest_pb2.SourceSpec(
                kind=ingest_pb2.SOURCE_KIND_IMAGE_FOLDER, uri=str(folder), camera_id="cam-outage-src", max_fps=10
            )
            source_id = (await stub.StartSource(ingest_pb2.StartSourceRequest(spec=spec), timeout=10)).source.source_id
            sending = asyncio.create_task(client(stub))

            async def status() -> ingest_pb2.SourceStatus:
                listed = await stub.ListSources(ingest_pb2.ListSourcesRequest(), timeout=10)
                return next(s for s in listed.sources if s.source_id == source_id)

            async def some_sent() -> bool:
                return (await status()).frames_published >= 5 and len(acknowledged) >= 3

            await eventually_async(some_sent, what="frames before the outage", timeout_s=30)
            proxy.cut()
            await asyncio.sleep(5)  # the outage: longer than the ack wait, so client calls fail
            assert (await status()).state == ingest_pb2.SOURCE_STATE_RUNNING
            proxy.restore()
            await asyncio.wait_for(sending, timeout=120)

            async def finished() -> bool:
                return (await status()).state == ingest_pb2.SOURCE_STATE_FINISHED

            await eventually_async(finished, what="the source to finish", timeout_s=120)
    assert grpc.StatusCode.UNAVAILABLE in failures, failures

    def complete(kept: list[common_pb2.Frame]) -> bool:
        sources = {f.source for f in kept if f.camera_id == "cam-outage-src"}
        return len(sources) == files and acknowledged <= {f.client_frame_id for f in kept}

    got = await read_topic(bootstrap, topic, lambda f: f.camera_id != "", complete, timeout_s=60)
    ids: dict[str, set[str]] = {}
    for frame in got:
        ids.setdefault(frame.source if frame.camera_id == "cam-outage-src" else frame.client_frame_id, set()).add(
            frame.frame_id
        )
    assert all(len(v) == 1 for v in ids.values()), "a frame sent again got another id"
