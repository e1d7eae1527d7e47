"""The registry's errors name their reason and resource in the status details (real MLflow)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_status import rpc_status

from carmesh.v1 import registry_pb2 as pb
from carmesh.v1 import registry_pb2_grpc
from tests.registry.support import import_messages, yolov8_file
from tests.status_details import details_of

Stub = registry_pb2_grpc.RegistryServiceStub


async def reason_and_resource(call: grpc.aio.UnaryUnaryCall) -> tuple[str, str]:
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    status = await rpc_status.aio.from_call(call)
    assert status is not None
    details = details_of(status)
    resource = details.get("ResourceInfo")
    named = f"{resource.resource_type}: {resource.resource_name}" if resource is not None else ""
    return details["ErrorInfo"].reason, named


async def test_missing_model_version_and_alias_have_reasons(stub: Stub, model_name: str, tmp_path: Path) -> None:
    await stub.ImportModel(import_messages(yolov8_file(tmp_path / "m.onnx").read_bytes(), model_name))  # type: ignore[arg-type]
    get = stub.GetModelVersion
    assert await reason_and_resource(get(pb.GetModelVersionRequest(name=model_name + "-x", version="1"))) == (
        "MODEL_NOT_FOUND",
        f"registered model: {model_name}-x",
    )
    assert await reason_and_resource(get(pb.GetModelVersionRequest(name=model_name, version="7"))) == (
        "VERSION_NOT_FOUND",
        f"model version: {model_name}/7",
    )
    assert await reason_and_resource(get(pb.GetModelVersionRequest(name=model_name, alias="nope"))) == (
        "UNKNOWN_ALIAS",
        f"model alias: {model_name}@nope",
    )
    rollback = stub.RollbackAlias(pb.RollbackAliasRequest(name=model_name, alias="nope"))
    assert await reason_and_resource(rollback) == ("NO_ROLLBACK_TARGET", "")
