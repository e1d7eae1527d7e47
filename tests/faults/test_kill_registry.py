"""kill -9 of the registry_gateway under load through the gateway (issue 19 point 5, the registry's row).

Real MLflow, registry_gateway, detector (following name@champion through the registry's alias watch)
and gateway processes. Detect calls and registry reads (ListModelVersions, GetModelVersion) run through
the gateway, each client on one channel for the whole run. The registry is SIGKILLed; while it is down
the champion alias is moved to v2 in MLflow directly; the registry is restarted on the same port.

Asserts: every Detect call answered, with the box of the version it names (the detector keeps the
model it holds while the registry is away); registry reads fail only with UNAVAILABLE while it is
down and succeed again after the restart; the detector's watch, never restarted, picks up v2 within
a bounded time."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from mlflow import MlflowClient

from carmesh.v1 import detector_pb2, detector_pb2_grpc, registry_pb2, registry_pb2_grpc
from kit.clients import insecure_channel
from tests.detector.test_registry_e2e import (
    BOX_V1,
    BOX_V2,
    IMAGE,
    detector_daemon,
    first_box,
    model_file,
    registry_daemon,
)
from tests.faults.support import LOAD_S
from tests.helpers import DaemonProcess
from tests.support import eventually_async

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

KEY = f"faults-{uuid.uuid4().hex}"
BOXES: dict[str, tuple[int, ...]] = {"v1": (22, 27, 42, 37), "v2": (12, 32, 20, 48)}
# How long after the registry is back the detector must serve the alias moved while it was down.
ALIAS_PICKUP_S = 30.0
# How long after the restarted registry reports SERVING a read through the gateway may still fail:
# the gateway's reconnect backoff (max 1 s) with gRPC's jitter, a health check round, and slack for a
# loaded machine (with a 5 s cap the last failure came up to 4 s after SERVING).
RECONNECT_BOUND_S = 3.0


def bearer() -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {KEY}"),)


@dataclass
class RegistryLoad:
    """What the clients saw. ``phase`` is "up", "down" (from the kill until the restarted registry reports
    SERVING) or "back"."""

    phase: str = "up"
    detect: Counter[str] = field(default_factory=Counter)
    versions_seen: list[str] = field(default_factory=list)
    wrong_answers: list[str] = field(default_factory=list)
    registry: dict[str, Counter[str]] = field(default_factory=dict)

    serving_at: float = 0.0  # monotonic time the restarted registry reported SERVING
    last_failure_s: float = 0.0  # seconds after that of the last failed registry read

    def count(self, outcome: str) -> None:
        self.registry.setdefault(self.phase, Counter())[outcome] += 1
        if self.phase == "back" and outcome != "OK":
            self.last_failure_s = time.monotonic() - self.serving_at


async def detect_client(
    address: str, boxes: dict[str, tuple[int, ...]], load: RegistryLoad, stop: asyncio.Event
) -> None:
    async with insecure_channel(address) as channel:
        stub = detector_pb2_grpc.DetectorServiceStub(channel)
        while not stop.is_set():
            try:
                reply = await stub.Detect(detector_pb2.DetectRequest(image=IMAGE), metadata=bearer(), timeout=10)
            except grpc.aio.AioRpcError as exc:
                load.detect[exc.code().name] += 1
                await asyncio.sleep(0.05)  # sleep is the test's pacing: a client retrying after an error
                continue
            load.detect["OK"] += 1
            version = reply.model.version
            load.versions_seen.append(version)
            if version not in boxes or first_box(reply) != boxes[version]:
                load.wrong_answers.append(f"{first_box(reply)} from version {version!r}")


async def registry_client(address: str, name: str, versions: set[str], load: RegistryLoad, stop: asyncio.Event) -> None:
    """ListModelVersions and GetModelVersion in turn; an answer must name the versions imported."""
    async with insecure_channel(address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        turn = 0
        while not stop.is_set():
            turn += 1
            try:
                if turn % 2:
                    listed = await stub.ListModelVersions(
                        registry_pb2.ListModelVersionsRequest(name=name), metadata=bearer(), timeout=10
                    )
                    got = {v.version for v in listed.versions}
                    if got != versions:
                        load.wrong_answers.append(f"ListModelVersions {sorted(got)}")
                else:
                    one = await stub.GetModelVersion(
                        registry_pb2.GetModelVersionRequest(name=name, version=min(versions)),
                        metadata=bearer(),
                        timeout=10,
                    )
                    if one.version.version != min(versions):
                        load.wrong_answers.append(f"GetModelVersion {one.version.version}")
            except grpc.aio.AioRpcError as exc:
                load.count(exc.code().name)
                await asyncio.sleep(0.05)  # sleep is the test's pacing: a client retrying after an error
                continue
            load.count("OK")
            await asyncio.sleep(0.02)  # sleep is the test's pacing: reads at ~50/s, not a busy loop


async def _import(address: str, data: bytes, name: str, alias: str) -> str:
    metadata = registry_pb2.ImportModelMetadata(
        name=name, family=registry_pb2.MODEL_FAMILY_YOLOV8, alias=alias, file_name="m.onnx"
    )

    requests = [registry_pb2.ImportModelRequest(metadata=metadata), registry_pb2.ImportModelRequest(chunk=data)]
    async with insecure_channel(address) as channel:
        reply = await registry_pb2_grpc.RegistryServiceStub(channel).ImportModel(iter(requests), timeout=60)
    return str(reply.version.version)


def kill(daemon: DaemonProcess) -> None:
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.proc.wait()


async def test_registry_sigkill_under_load_detect_keeps_serving_and_the_watch_recovers(
    mlflow_uri: str, tmp_path: Path
) -> None:
    name = f"kill-reg-{uuid.uuid4().hex[:8]}"
    registry = registry_daemon(mlflow_uri, tmp_path)
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY} faults *\n")
    with registry:
        v1 = await _import(registry.address, model_file(tmp_path / "v1.onnx", BOX_V1), name, "champion")
        v2 = await _import(registry.address, model_file(tmp_path / "v2.onnx", BOX_V2), name, "")
        boxes = {v1: BOXES["v1"], v2: BOXES["v2"]}
        detector = detector_daemon(registry.address, name, tmp_path)
        detector.wait_for = "serving"  # v1 is the champion already
        with detector:
            gateway_args = ["--api-keys-file", str(keys), "--registry-addr", registry.address]
            gateway_args += ["--detector-addrs", detector.address, "--health-check-interval-s", "0.2"]
            gateway_args += ["--rate-limit-rps", "0"]
            with DaemonProcess("gateway", gateway_args, timeout_s=30) as gateway:
                load = RegistryLoad()
                stop = asyncio.Event()
                clients = [asyncio.create_task(detect_client(gateway.address, boxes, load, stop)) for _ in range(2)]
                clients.append(asyncio.create_task(registry_client(gateway.address, name, {v1, v2}, load, stop)))
                try:
                    await eventually_async(
                        lambda: load.detect["OK"] >= 10 and load.registry.get("up", Counter())["OK"] >= 10,
                        what="Detect and registry reads answered through the gateway",
                        timeout_s=60,
                        detail=lambda: (load, detector.log()[-2000:]),
                    )
                    await asyncio.sleep(LOAD_S)  # sleep is the test: load runs before the kill
                    kill(registry)
                    load.phase = "down"
                    # The alias moves while nobody can ask the registry: MLflow directly, as an operator would.
                    await asyncio.to_thread(MlflowClient(mlflow_uri).set_registered_model_alias, name, "champion", v2)
                    ok_at_kill = load.detect["OK"]
                    await asyncio.sleep(max(1.0, LOAD_S))  # sleep is the test: load runs while the registry is dead
                    await eventually_async(
                        lambda: load.detect["OK"] >= ok_at_kill + 20,
                        what="Detect answered while the registry is down",
                        timeout_s=30,
                    )
                    assert set(load.versions_seen[ok_at_kill:]) == {v1}, "the detector must hold v1 meanwhile"
                    registry.start()
                    load.serving_at = back_at = time.monotonic()
                    load.phase = "back"
                    await eventually_async(
                        lambda: load.versions_seen[-1] == v2,
                        what="the detector's watch to pick up the alias moved while the registry was down",
                        timeout_s=ALIAS_PICKUP_S,
                        detail=lambda: detector.log()[-3000:],
                    )
                    pickup_s = time.monotonic() - back_at
                    await eventually_async(
                        lambda: load.registry.get("back", Counter())["OK"] >= 10,
                        what="registry reads answered again after the restart",
                        timeout_s=30,
                        detail=lambda: (load, gateway.log()[-3000:]),
                    )
                    await asyncio.sleep(LOAD_S)  # sleep is the test: load runs after the restart
                finally:
                    stop.set()
                    results = await asyncio.gather(*clients, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    assert not load.wrong_answers, load.wrong_answers[:5]
    # The detector is not down: not one Detect call failed, before, during or after the outage.
    assert set(load.detect) == {"OK"}, load.detect
    assert load.versions_seen[-1] == v2
    # Registry reads: all OK while it was up; only UNAVAILABLE (at least one) while it was dead.
    assert set(load.registry["up"]) == {"OK"}, load.registry
    assert set(load.registry["down"]) == {"UNAVAILABLE"}, load.registry
    assert set(load.registry["back"]) <= {"OK", "UNAVAILABLE"}, load.registry
    # After the restart the gateway's channel may still wait out its reconnect backoff (at most 1 s,
    # gateway/upstream.py) before a call reaches the registry: bounded, never longer.
    assert load.last_failure_s <= RECONNECT_BOUND_S, load.last_failure_s
    print(
        f"registry: detect {dict(load.detect)}; reads {load.registry}, the last failure {load.last_failure_s:.1f} s "
        f"after the restarted registry was SERVING; v2 served {pickup_s:.1f} s after it"
    )
