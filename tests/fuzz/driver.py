"""Sends generated requests for every RPC of carmesh.v1 through the gateway and checks the
mesh after each RPC's batch: no INTERNAL or UNKNOWN answer, every daemon still up (same pid,
health answering), each daemon's resident memory under a stated bound."""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from carmesh.v1 import detector_pb2, feature_pb2, ingest_pb2, registry_pb2, tracking_pb2, training_pb2
from tests.fuzz import wire

FAILING_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
# The bound each daemon's RSS must stay under; the trainer (MLflow, ONNX Runtime) is the largest (~600 MB idle).
MAX_RSS_BYTES = 2 * 1024**3
# Unary calls answer at once; server streams (WatchAlias, WatchTrainingJob) are cut after a few
# replies or this long, which is DEADLINE_EXCEEDED, an answer like any other.
CALL_TIMEOUT_S = 10.0
STREAM_TIMEOUT_S = 2.0
STREAM_REPLIES = 3
PARALLEL_CALLS = 8
# Calls that would do real, slow work get a field that makes them fail fast, whatever else they hold.
FAST_FAILING: dict[str, tuple[tuple[str, str], ...]] = {
    "carmesh.v1.TrainingService/StartTraining": (("dataset", "fuzz-missing-snapshot"),),
    "carmesh.v1.TrainingService/EvaluateModel": (("dataset", "fuzz-missing-snapshot"),),
    "carmesh.v1.IngestService/ImportDataset": (("path", "/nonexistent-fuzz/dataset"),),
    "carmesh.v1.IngestService/StartSource": (("spec.uri", "/nonexistent-fuzz/source.mp4"),),
}


def methods() -> list[MethodDescriptor]:
    out = []
    for module in (detector_pb2, registry_pb2, ingest_pb2, feature_pb2, training_pb2, tracking_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            out.extend(service.methods)
    return out


def path_of(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def requests(method: MethodDescriptor, count: int, fuzz_seed: int) -> list[list[bytes]]:
    """``count`` generated calls of ``method`` (each a list of request messages), from a fixed seed."""
    one = wire.message(method.input_type)
    fixes = b"".join(wire.override(method.input_type, p, v) for p, v in FAST_FAILING.get(path_of(method)[1:], ()))
    messages = (
        st.lists(one, min_size=0, max_size=4) if method.client_streaming else st.lists(one, min_size=1, max_size=1)
    )
    drawn: list[list[bytes]] = []

    @seed(fuzz_seed)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(messages)
    def collect(batch: list[bytes]) -> None:
        drawn.append([m + fixes for m in batch])

    collect()
    return drawn


@dataclass
class Tally:
    """Answers per RPC and status code, and the calls that broke the property."""

    codes: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    max_rss_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.codes.values())

    def report(self) -> str:
        by_code: collections.Counter[str] = collections.Counter()
        per_method: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for (method, code), n in self.codes.items():
            by_code[code] += n
            per_method[method][code] += n
        lines = [f"fuzz: {self.total} calls, {len(self.failures)} INTERNAL/UNKNOWN"]
        lines += [f"  {code:<20} {n}" for code, n in by_code.most_common()]
        for method in sorted(per_method):
            counts = ", ".join(f"{code} {n}" for code, n in per_method[method].most_common())
            lines.append(f"  {method:<45} {sum(per_method[method].values()):>6}  {counts}")
        lines += [f"  max RSS {name:<17} {rss / 2**20:.0f} MiB" for name, rss in sorted(self.max_rss_bytes.items())]
        return "\n".join(lines)


def _drain(replies: Iterator[object], call: grpc.Call) -> None:
    for index, _ in enumerate(replies):
        if index + 1 >= STREAM_REPLIES:
            call.cancel()
            return


def call_once(
    channel: grpc.Channel, method: MethodDescriptor, batch: list[bytes], key: str
) -> tuple[grpc.StatusCode, str]:
    path, metadata = path_of(method), (("authorization", f"Bearer {key}"),)
    try:
        if not method.client_streaming and not method.server_streaming:
            channel.unary_unary(path)(batch[0], timeout=CALL_TIMEOUT_S, metadata=metadata)
        elif method.client_streaming and not method.server_streaming:
            channel.stream_unary(path)(iter(batch), timeout=CALL_TIMEOUT_S, metadata=metadata)
        else:
            multi = channel.stream_stream(path) if method.client_streaming else channel.unary_stream(path)
            sent = iter(batch) if method.client_streaming else batch[0]
            call = multi(sent, timeout=STREAM_TIMEOUT_S, metadata=metadata)
            _drain(call, call)  # type: ignore[arg-type]
    except grpc.RpcError as err:
        return err.code(), err.details() or ""  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


def send_all(
    channel: grpc.Channel, method: MethodDescriptor, batches: list[list[bytes]], key: str, tally: Tally
) -> None:
    name = path_of(method)[1:].removeprefix("carmesh.v1.")
    with concurrent.futures.ThreadPoolExecutor(PARALLEL_CALLS) as pool:
        codes = pool.map(lambda b: call_once(channel, method, b, key), batches)
        for batch, (code, details) in zip(batches, codes, strict=True):
            tally.codes[(name, code.name)] += 1
            if code in FAILING_CODES:
                shown = " | ".join(m[:300].hex() for m in batch[:3]) or "(no messages)"
                tally.failures.append(f"{name}: {code.name} {details[:300]!r} for {len(batch)} message(s): {shown}")


@dataclass(frozen=True)
class Daemon:
    name: str
    address: str
    pid: int
    credentials: grpc.ChannelCredentials  # TLS to the gateway, mutual TLS (`make up`'s operator) to the others


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def check_daemons(daemons: list[Daemon], tally: Tally) -> list[str]:
    """What is wrong with the mesh now: a daemon gone or restarted, not answering health, over the RSS bound."""
    problems = []
    for daemon in daemons:
        if not Path(f"/proc/{daemon.pid}").exists():
            problems.append(f"{daemon.name} (pid {daemon.pid}) is gone")
            continue
        rss = rss_bytes(daemon.pid)
        tally.max_rss_bytes[daemon.name] = max(rss, tally.max_rss_bytes.get(daemon.name, 0))
        if rss > MAX_RSS_BYTES:
            problems.append(f"{daemon.name} uses {rss / 2**20:.0f} MiB, over {MAX_RSS_BYTES / 2**20:.0f} MiB")
        with grpc.secure_channel(daemon.address, daemon.credentials) as channel:
            try:
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
            except grpc.RpcError as err:
                problems.append(f"{daemon.name} health check failed: {err.code().name}")  # type: ignore[attr-defined]
                continue
        if status != health_pb2.HealthCheckResponse.SERVING:
            problems.append(f"{daemon.name} is {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")
    return problems
