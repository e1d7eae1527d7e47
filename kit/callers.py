"""Who called a daemon: the API key the gateway admitted, passed on in call metadata.

The gateway drops these entries from what clients send and sets them on every call it
forwards: ``x-carmesh-caller`` (the key's name, safe to log) and ``x-carmesh-caller-scopes``
(its scopes, comma-separated). Daemons trust them because only the gateway is meant to reach
their ports; mutual TLS between daemons (not built yet) is what will make that trust real.
A call without them came straight to the daemon, not through the gateway: it is the
``anonymous`` caller with every scope, as when the gateway runs without keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

CALLER_HEADER = "x-carmesh-caller"
CALLER_SCOPES_HEADER = "x-carmesh-caller-scopes"
ALL_SCOPES = "*"
# What IngestFrames needs, beside ``ingest``, to send labels (annotations, data set, split).
LABELS_SCOPE = "ingest.labels"
ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class CallerIdentity:
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return ALL_SCOPES in self.scopes or scope in self.scopes


def caller_metadata(name: str, scopes: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """The entries the gateway adds to a call it forwards."""
    return ((CALLER_HEADER, name), (CALLER_SCOPES_HEADER, ",".join(sorted(scopes))))


def caller_of(metadata: Iterable[tuple[str, Any]] | None) -> CallerIdentity:
    """The caller named by a call's metadata (see the module docstring)."""
    entries = {key.lower(): value for key, value in metadata or () if isinstance(value, str)}
    name = entries.get(CALLER_HEADER)
    if name is None:
        return CallerIdentity(ANONYMOUS, frozenset({ALL_SCOPES}))
    scopes = entries.get(CALLER_SCOPES_HEADER, "")
    return CallerIdentity(name, frozenset(s for s in scopes.split(",") if s))
