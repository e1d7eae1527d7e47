"""protos/inference/grpc_predict_v2.proto (KServe v2): its committed descriptor set is fresh, every message,
field and RPC matches tritonclient's grpc_service.proto (so tritonclient talks to carmesh unchanged), and its
classes load in a process that has loaded tritonclient, in either order."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor

from carmesh.kserve import DESCRIPTOR_SET_FILE, METHODS, SERVICE_NAME, protocol
from tests.helpers import REPO_ROOT

PROTO = REPO_ROOT / "protos" / "inference" / "grpc_predict_v2.proto"
COMMITTED = REPO_ROOT / "carmesh" / "kserve" / DESCRIPTOR_SET_FILE


def test_descriptor_set_is_fresh(tmp_path: Path) -> None:
    out = tmp_path / DESCRIPTOR_SET_FILE
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{REPO_ROOT / 'protos'}", f"--descriptor_set_out={out}"]
    subprocess.run([*command, str(PROTO)], check=True)
    assert out.read_bytes() == COMMITTED.read_bytes(), "carmesh/kserve is stale, run `make protos`"


def _fields(message: Descriptor) -> dict[str, tuple[int, int, bool, str]]:
    return {
        f.name: (f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else "")
        for f in message.fields
    }


def _same_messages(ours: Descriptor, theirs: Descriptor) -> None:
    assert ours.full_name == theirs.full_name
    mine, triton = _fields(ours), _fields(theirs)
    for name, spec in mine.items():
        assert triton.get(name) == spec, f"{ours.full_name}.{name}: ours {spec}, tritonclient's {triton.get(name)}"
    for nested in ours.nested_types:
        _same_messages(nested, theirs.nested_types_by_name[nested.name])


def test_wire_compatible_with_tritonclient() -> None:
    service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
    ours = protocol().service
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == SERVICE_NAME
    assert [m.name for m in ours.methods] == list(METHODS)
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert (method.client_streaming, method.server_streaming) == (other.client_streaming, other.server_streaming)
        _same_messages(method.input_type, other.input_type)
        _same_messages(method.output_type, other.output_type)
    for message in ours.file.message_types_by_name.values():
        _same_messages(message, service_pb2.DESCRIPTOR.message_types_by_name[message.name])


@pytest.mark.parametrize("first", ["carmesh", "tritonclient"])
def test_loads_beside_tritonclient_in_one_process(first: str) -> None:
    pytest.importorskip("tritonclient.grpc")
    imports = ["import tritonclient.grpc", "from carmesh.kserve import protocol; protocol()"]
    if first == "carmesh":
        imports.reverse()
    code = "; ".join(
        [*imports, "import tritonclient.grpc.service_pb2 as s; print(s.ModelInferRequest.DESCRIPTOR.name)"]
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
