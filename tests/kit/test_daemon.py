"""The daemon skeleton: start, ready file, metrics, NOT_SERVING before the drain hook, close in
reverse order, and a failed start that closes what it had opened."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kit.clients import insecure_channel
from kit.config import BaseSettings, load_settings
from kit.daemon import Context, Daemon, DaemonSpec, StartupError, running, write_ready_file
from kit.mesh_tls import CallerPolicy
from kit.server import Server
from tests.helpers import listening_ports, new_threads

SERVICE = "carmesh.v1.DetectorService"  # any name: the toy serves health only


class Toy(Daemon):
    def __init__(self, server: Server, events: list[str], fail_start: bool) -> None:
        self.server = server
        self.events = events
        self.fail_start = fail_start

    async def start(self) -> None:
        self.events.append("start")
        if self.fail_start:
            raise StartupError("the model file is not a model")
        await self.server.set_serving(True)

    async def before_drain(self) -> None:
        async with insecure_channel(f"127.0.0.1:{self.server.port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE))
        self.events.append(f"before_drain {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")


def toy(events: list[str], *, fail_start: bool = False) -> DaemonSpec[BaseSettings, Toy]:
    """A daemon that opens a thread pool and a task before its server, as real ones open their stores."""

    async def build(cfg: BaseSettings, ctx: Context) -> Toy:
        pool = ThreadPoolExecutor(1, thread_name_prefix="toy-pool")
        pool.submit(lambda: None).result()
        ctx.on_close(lambda: (events.append("close pool"), pool.shutdown()))
        ctx.background(asyncio.Event().wait(), name="toy-task")
        server = ctx.grpc_server([SERVICE], callers=CallerPolicy(default=frozenset()))
        ctx.on_close(lambda: events.append("close last opened"))
        return Toy(server, events, fail_start)

    return DaemonSpec("toy", BaseSettings, "CARMESH_TOY_", build)


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        return reply.read().decode()


async def test_serves_writes_the_ready_file_then_drains_and_closes_in_reverse(tmp_path: Path) -> None:
    events: list[str] = []
    ready_file = tmp_path / "ready.json"
    cfg = BaseSettings(ready_file=ready_file, mesh_plaintext=True)  # gRPC and metrics on port 0
    ports_before = listening_ports()
    async with running(toy(events), cfg) as started:
        assert started.grpc_address != "127.0.0.1:0" and started.metrics_address is not None
        ready = json.loads(ready_file.read_text())
        assert ready == {"grpc": started.grpc_address, "metrics": started.metrics_address, "pid": os.getpid()}
        async with insecure_channel(ready["grpc"]) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        text = await asyncio.to_thread(_scrape, ready["metrics"])
        assert 'carmesh_rpc_total{code="OK",method="/grpc.health.v1.Health/Check",service="toy"} 1.0' in text
        assert {started.server.port, int(ready["metrics"].rsplit(":", 1)[1])} <= listening_ports()
    # The hook saw NOT_SERVING; then what was opened last closed first.
    assert events == ["start", "before_drain NOT_SERVING", "close last opened", "close pool"]
    assert not ready_file.exists()
    assert listening_ports() == ports_before


async def test_a_failed_start_closes_what_was_opened_before_it(tmp_path: Path) -> None:
    events: list[str] = []
    threads_before = set(threading.enumerate())
    ports_before = listening_ports()
    cfg = BaseSettings(ready_file=tmp_path / "ready.json", mesh_plaintext=True)
    with pytest.raises(StartupError, match="not a model"):
        async with running(toy(events, fail_start=True), cfg):
            raise AssertionError("a failed start yields nothing")
    assert events == ["start", "close last opened", "close pool"]  # no drain hook: it never served
    assert [t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    assert new_threads(threads_before) == []
    assert listening_ports() == ports_before
    assert not (tmp_path / "ready.json").exists()


async def test_a_build_without_a_grpc_server_is_refused_and_closed() -> None:
    events: list[str] = []

    async def build(cfg: BaseSettings, ctx: Context) -> Daemon:
        ctx.on_close(lambda: events.append("closed"))
        return Daemon()

    with pytest.raises(RuntimeError, match="without creating its gRPC server"):
        async with running(
            DaemonSpec("bare", BaseSettings, "CARMESH_BARE_", build), BaseSettings(metrics=False, mesh_plaintext=True)
        ):
            pass
    assert events == ["closed"]


def test_ready_file_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "ready.json"
    path.write_text("stale")
    write_ready_file(path, "127.0.0.1:5", None)
    assert json.loads(path.read_text()) == {"grpc": "127.0.0.1:5", "metrics": None, "pid": os.getpid()}
    assert [p.name for p in tmp_path.iterdir()] == ["ready.json"]  # no temporary file left


def test_ready_file_and_metrics_come_from_flags_or_the_environment(tmp_path: Path) -> None:
    environ = {"CARMESH_TOY_READY_FILE": str(tmp_path / "env.json"), "CARMESH_TOY_METRICS": "false"}
    environ["CARMESH_TOY_MESH_PLAINTEXT"] = "true"
    from_env = load_settings(BaseSettings, "CARMESH_TOY_", [], environ=environ)
    assert (from_env.ready_file, from_env.metrics) == (tmp_path / "env.json", False)
    from_flags = load_settings(BaseSettings, "CARMESH_TOY_", ["--ready-file", "r.json", "--metrics"], environ=environ)
    assert (from_flags.ready_file, from_flags.metrics) == (Path("r.json"), True)
