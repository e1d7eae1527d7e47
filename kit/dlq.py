"""The dead-letter shape shared by every consumer of carmesh.frames.v1: the original key, value
and headers, plus ``carmesh-*`` headers saying why and where the record came from."""

from __future__ import annotations

from typing import Any

# Longest reason kept in a header: exception texts can quote whole inputs.
MAX_REASON_CHARS = 2000


def dlq_headers(record: Any, reason: str, *, by: str = "") -> list[tuple[str, bytes]]:
    """Headers of ``record``'s dead letter (an aiokafka ConsumerRecord); ``by`` names the daemon."""
    ours = [
        ("carmesh-reason", reason[:MAX_REASON_CHARS].encode()),
        ("carmesh-source-topic", str(record.topic).encode()),
        ("carmesh-source-partition", str(record.partition).encode()),
        ("carmesh-source-offset", str(record.offset).encode()),
    ]
    if by:
        ours.append(("carmesh-dead-lettered-by", by.encode()))
    original = [(k, v) for k, v in (record.headers or ()) if not k.startswith("carmesh-")]
    return [*original, *ours]
