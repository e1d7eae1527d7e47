"""An unknown ModelFamily at import is INVALID_ARGUMENT naming the field, not a ValueError that
the interceptor turns into INTERNAL (hole 8 of issue 16)."""

from __future__ import annotations

import grpc
import pytest

from carmesh.v1 import registry_pb2
from kit.errors import DomainError
from registry_gateway.server import import_request


def test_unknown_family_is_invalid_argument() -> None:
    meta = registry_pb2.ImportModelMetadata(name="m", family=99)  # type: ignore[arg-type]
    with pytest.raises(DomainError) as err:
        import_request(meta)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "family 99 (not a ModelFamily value) is not supported; use MODEL_FAMILY_" in str(err.value)
    assert err.value.violations[0].field == "metadata.family"
