"""Output helpers shared by the commands: aligned tables, timestamps, enum names, JSON lines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TextIO

from google.protobuf import json_format
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def is_set(stamp: Timestamp) -> bool:
    return bool(stamp.seconds or stamp.nanos)


def when(stamp: Timestamp, seconds: bool = False) -> str:
    """``YYYY-mm-dd HH:MM`` in UTC, ``-`` when unset."""
    if not is_set(stamp):
        return "-"
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def age(stamp: Timestamp, now: datetime | None = None) -> str:
    """How long ago, for people: ``4s``, ``3m``, ``2h``, ``5d``."""
    now = now or datetime.now(UTC)
    seconds = max(0.0, (now - stamp.ToDatetime(tzinfo=UTC)).total_seconds())
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"


def enum_name(enum: EnumTypeWrapper, value: int, prefix: str) -> str:
    """``SOURCE_STATE_RUNNING`` -> ``running``; unknown numbers (a newer server) print as the number."""
    try:
        name = enum.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(prefix).lower()


def as_dict(message: Message) -> dict[str, object]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def print_json(message: Message, stream: TextIO) -> None:
    print(json.dumps(as_dict(message)), file=stream, flush=True)
