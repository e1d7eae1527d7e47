"""KServe's v2 inference protocol (``inference.GRPCInferenceService``) from its generated descriptor set.

``grpc_predict_v2.binpb`` is protoc's output for protos/inference/grpc_predict_v2.proto (``make protos``;
committed, never edited by hand). It is loaded into a descriptor pool of its own rather than the default
one: tritonclient's generated code defines the same ``inference.*`` names in the default pool, and a
process that holds both (a detector with the Triton backend, a test that calls through tritonclient)
must not fail on duplicate symbols. The wire format is the same either way.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import ServiceDescriptor

SERVICE_NAME = "inference.GRPCInferenceService"
DESCRIPTOR_SET_FILE = "grpc_predict_v2.binpb"
# The unary RPCs carmesh serves, all of the file's.
METHODS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")


@dataclass(frozen=True)
class Protocol:
    """The service's descriptor and its message classes by short name (``ModelInferRequest``, ...)."""

    service: ServiceDescriptor
    messages: dict[str, type[Any]]

    def request_type(self, method: str) -> type[Any]:
        return self.messages[self.service.methods_by_name[method].input_type.name]

    def response_type(self, method: str) -> type[Any]:
        return self.messages[self.service.methods_by_name[method].output_type.name]


@functools.cache
def protocol() -> Protocol:
    """Loads the descriptor set once per process (the classes must be the same objects for every caller)."""
    raw = resources.files(__package__).joinpath(DESCRIPTOR_SET_FILE).read_bytes()
    files = descriptor_pb2.FileDescriptorSet.FromString(raw)
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    service = pool.FindServiceByName(SERVICE_NAME)
    messages = {
        descriptor.name: message_factory.GetMessageClass(descriptor)
        for descriptor in service.file.message_types_by_name.values()
    }
    return Protocol(service, messages)
