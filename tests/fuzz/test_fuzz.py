"""The fuzz property over the whole mesh (`make up`, driven through the gateway with the admin
key): for generated requests of every RPC of carmesh.v1 (random fields, unknown enum values,
invalid UTF-8, huge repeated fields, hostile images), no answer is INTERNAL or UNKNOWN, every
daemon keeps its pid and answers health, and each daemon's RSS stays under MAX_RSS_BYTES.

FUZZ_EXAMPLES (default 300, spread over the RPCs) and FUZZ_SEED pick the run; `make fuzz`
runs 10,000 and prints the counts per RPC and per status code."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from devstack.services import grpc_serving
from tests.e2e.test_mesh import Mesh
from tests.e2e.test_mesh import mesh as mesh
from tests.fuzz.driver import Daemon, Tally, check_daemons, methods, requests, send_all
from tests.support import eventually

pytestmark = pytest.mark.e2e

DEFAULT_EXAMPLES = 300
DEFAULT_SEED = 16


def _serve_a_model(mesh: Mesh, model: Path) -> None:
    """The detector serves only with a champion; without one the gateway answers UNAVAILABLE
    for it and the fuzzed images never reach it."""
    imported = mesh.cli(
        "models", "import", str(model), "--name", "car-detector", "--family", "yolox", "--names", "coco"
    )
    assert imported.returncode == 0, imported.stderr
    promoted = mesh.cli("models", "promote", "car-detector", "1", "--alias", "champion", "--force")
    assert promoted.returncode == 0, promoted.stderr
    eventually(
        lambda: grpc_serving(f"127.0.0.1:{mesh.ports.detector}", mesh.operator_tls()),
        what="the detector to serve the imported model",
        timeout_s=120,
        interval_s=0.2,
    )


def _daemons(mesh: Mesh) -> list[Daemon]:
    ports = mesh.ports
    by_name = {
        "gateway": ports.gateway,
        "registry_gateway": ports.registry,
        "ingestor": ports.ingestor,
        "feature_service": ports.feature,
        "trainer": ports.trainer,
        "detector": ports.detector,
        "tracker": ports.tracker,
    }
    pids = {p.stem: int(p.read_text()) for p in (mesh.run_dir / "pids").glob("*.pid")}
    operator = mesh.operator_tls()
    assert operator is not None, "`make up` wrote no mesh certificates"

    def credentials(name: str) -> grpc.ChannelCredentials:
        return mesh.public_credentials() if name == "gateway" else operator.channel_credentials()

    return [Daemon(name, f"127.0.0.1:{port}", pids[name], credentials(name)) for name, port in by_name.items()]


def _tracebacks(mesh: Mesh) -> str:
    """The distinct errors the daemons logged with a traceback (the run dir goes at teardown)."""
    seen: dict[str, str] = {}
    for log in sorted((mesh.run_dir / "logs").glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            exc = record.get("exc") if isinstance(record, dict) else None
            if exc:
                where = exc.strip().splitlines()
                seen.setdefault(f"{log.stem}: {where[-1]}", "\n".join(where[-12:]))
    return "".join(f"\n--- {key}\n{tail}" for key, tail in seen.items())


@pytest.fixture(scope="module")
def tally() -> Iterator[Tally]:
    tally = Tally()
    yield tally
    report = tally.report()
    print("\n" + report)
    if os.environ.get("FUZZ_REPORT"):
        with open(os.environ["FUZZ_REPORT"], "w", encoding="utf-8") as out:
            out.write(report + "\n")


@pytest.mark.timeout(0)
def test_no_rpc_answers_internal_or_unknown_and_every_daemon_survives(
    mesh: Mesh, tally: Tally, shared_dir: Path
) -> None:
    _serve_a_model(mesh, shared_dir / "models" / "yolox_nano.onnx")
    examples = int(os.environ.get("FUZZ_EXAMPLES", DEFAULT_EXAMPLES))
    fuzz_seed = int(os.environ.get("FUZZ_SEED", DEFAULT_SEED))
    daemons = _daemons(mesh)
    assert check_daemons(daemons, tally) == []
    rpcs = methods()
    per_rpc = max(1, examples // len(rpcs))
    # What an RPC cannot use (GetModelInfo has no fields: one distinct request) goes to the next ones.
    left = examples
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    problems: list[str] = []
    with grpc.secure_channel(mesh.gateway, mesh.public_credentials(), options=options) as channel:
        for index, method in enumerate(rpcs):
            batches = requests(method, max(1, left // (len(rpcs) - index)), fuzz_seed)
            left -= len(batches)
            send_all(channel, method, batches, mesh.api_key, tally)
            problems += [f"after {method.name}: {p}" for p in check_daemons(daemons, tally)]
            if problems:
                break
    assert not tally.failures, "\n".join(tally.failures[:20]) + _tracebacks(mesh)
    assert not problems, "\n".join(problems)
    assert tally.total >= per_rpc * len(rpcs) // 2, tally.report()
