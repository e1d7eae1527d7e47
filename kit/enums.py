"""Names of proto enum values that may be outside the enum: proto3 enums are open, so a client
can send any int32, and ``EnumTypeWrapper.Name`` raises ValueError on an unknown one."""

from __future__ import annotations

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper


def enum_name(enum: EnumTypeWrapper, value: int) -> str:
    """``MODEL_FAMILY_YOLOX`` for a known value, ``99 (not a ModelFamily value)`` for an unknown one."""
    try:
        return enum.Name(value)
    except ValueError:
        return f"{value} (not a {enum.DESCRIPTOR.name} value)"
