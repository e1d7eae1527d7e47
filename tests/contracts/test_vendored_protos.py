"""protos/google/rpc is a copy of googleapis' files (for buf and protoc); at run time the contracts
use googleapis-common-protos' generated code. Every message and field of the copy must be in the
installed package with the same number and type (a newer package may add fields)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_tools import protoc

from tests.helpers import REPO_ROOT

PROTOS = REPO_ROOT / "protos"


def _fields(file: descriptor_pb2.FileDescriptorProto) -> dict[str, dict[str, tuple[int, int, str]]]:
    return {
        message.name: {f.name: (f.number, f.type, f.type_name) for f in message.field} for message in file.message_type
    }


@pytest.mark.parametrize("module", [status_pb2, error_details_pb2], ids=lambda m: m.DESCRIPTOR.name)
def test_vendored_google_rpc_protos_agree_with_the_installed_package(module, tmp_path: Path) -> None:
    name = module.DESCRIPTOR.name  # google/rpc/status.proto
    out = tmp_path / "set.pb"
    include = str(Path(protoc.__file__).parent / "_proto")
    # In a subprocess: protoc's C++ runtime crashes in a process that has loaded TensorFlow (other tests do).
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", f"-I{include}", f"--descriptor_set_out={out}"]
    done = subprocess.run([*command, name], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    [vendored] = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    installed = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(installed)
    have = _fields(installed)
    for message, fields in _fields(vendored).items():
        assert message in have, f"{name}: {message} is not in the installed googleapis-common-protos"
        for field, shape in fields.items():
            assert have[message].get(field) == shape, f"{name}: {message}.{field} differs from the installed package"


def test_stream_responses_carry_google_rpc_status() -> None:
    from carmesh.v1 import detector_pb2, ingest_pb2

    for message in (detector_pb2.DetectStreamResponse, ingest_pb2.IngestFramesResponse):
        error_fields = [f for f in message.DESCRIPTOR.fields if f.message_type is status_pb2.Status.DESCRIPTOR]
        assert error_fields, f"{message.DESCRIPTOR.full_name} has no google.rpc.Status field"
