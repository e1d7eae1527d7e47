"""API keys and scopes.

A caller sends its key as gRPC metadata ``authorization: Bearer KEY``. A key has a name
(used in logs, metrics and rate limits; the key itself is never logged) and scopes:

==================  =====================================================================
scope               allows
==================  =====================================================================
``detect``          every ``carmesh.v1.DetectorService`` method, and KServe v2's
                    ``inference.GRPCInferenceService`` (the detectors' tritonclient endpoint)
``registry.read``   ``RegistryService``: ListModels, ListModelVersions, GetModelVersion,
                    DownloadModel, WatchAlias, GetTritonConfig
``registry.write``  ``RegistryService``: ImportModel, SetAlias, DeleteAlias, RollbackAlias
                    (and any method not listed as a read)
``ingest``          ``IngestService``: IngestFrames of unlabelled frames, StartSource,
                    StopSource, ListSources
``ingest.labels``   with ``ingest``: IngestFrames of frames with annotations, a data set or
                    a split; they land in the key's namespace (the ingestor checks this,
                    from the scopes the gateway passes on)
``ingest.import``   ``IngestService``: ImportDataset (server paths into the operator's
                    namespace, where training data comes from)
``features``        every ``carmesh.v1.FeatureService`` method
``train``           every ``carmesh.v1.TrainingService`` method
``tracking.read``   ``TrackingService``: ListCameraLayouts, QueryCounts
``tracking.write``  ``TrackingService``: SetCameraLayout (and any method not listed as a read)
``events``          ``TrackingService``: WatchEvents (live crossings and zone changes)
``*`` or ``admin``  everything
==================  =====================================================================

Keys file (``--api-keys-file``): one key per line, ``KEY NAME SCOPES`` separated by
whitespace, SCOPES comma-separated; ``#`` starts a comment; blank lines are ignored.
KEY may be given as ``sha256:HEX`` (the hex sha256 of the key) so the file holds no secret::

    # key                              name    scopes
    Zq4v0uYw3bH8xL2mN7pR5sT1cA9dE6fG   alice   detect,registry.read
    sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae  ci  *

Keys in the environment (``CARMESH_GATEWAY_API_KEYS``) or flag (``--api-keys``):
comma-separated ``KEY:NAME:SCOPES`` entries with SCOPES joined by ``+``, e.g.
``Zq4v...:alice:detect+registry.read,Xy...:ops:*``.

A key is 16 to 512 printable ASCII characters without whitespace, ``:``, ``,`` or ``#``; make
one with ``python -c "import secrets; print(secrets.token_urlsafe(24))"``. A name is
letters, digits, ``.``, ``_`` or ``-``. Several keys may share a name (key rotation);
they then share its rate limit.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ApiKeysError, MissingCredentials, ScopeDenied, UnknownApiKey
from kit.callers import LABELS_SCOPE

ALL = "*"
SCOPES = frozenset(
    {"detect", "registry.read", "registry.write", "ingest", LABELS_SCOPE, "ingest.import", "features", "train", ALL}
    | {"tracking.read", "tracking.write", "events"}
)
_SCOPE_ALIASES = {"admin": ALL}

_SERVICE_SCOPES = {
    "carmesh.v1.DetectorService": "detect",
    "inference.GRPCInferenceService": "detect",
    "carmesh.v1.IngestService": "ingest",
    "carmesh.v1.FeatureService": "features",
    "carmesh.v1.TrainingService": "train",
}
_REGISTRY_READS = frozenset(
    {"ListModels", "ListModelVersions", "GetModelVersion", "DownloadModel", "WatchAlias", "GetTritonConfig"}
)
_TRACKING_READS = frozenset({"ListCameraLayouts", "QueryCounts"})

# Printable ASCII except the separators of the two formats (':' ',') and the comment sign.
_KEY_RE = re.compile(r"^[!\"$-+\--9;-~]{16,512}$")
_HASH_RE = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def required_scope(full_method: str) -> str:
    """The scope a call to ``/package.Service/Method`` needs; ``*`` for anything not mapped."""
    service, _, method = full_method.lstrip("/").partition("/")
    if service == "carmesh.v1.RegistryService":
        return "registry.read" if method in _REGISTRY_READS else "registry.write"
    if service == "carmesh.v1.TrackingService" and method == "WatchEvents":
        return "events"
    if service == "carmesh.v1.TrackingService":
        return "tracking.read" if method in _TRACKING_READS else "tracking.write"
    if service == "carmesh.v1.IngestService" and method == "ImportDataset":
        # An import writes the operator's namespace, the one training data comes from.
        return "ingest.import"
    return _SERVICE_SCOPES.get(service, ALL)


@dataclass(frozen=True)
class Caller:
    """Who is calling; ``name`` is safe to log."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return ALL in self.scopes or scope in self.scopes


ANONYMOUS = Caller("anonymous", frozenset({ALL}))


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _parse_entry(key: str, name: str, scopes: Iterable[str], where: str) -> tuple[str, Caller]:
    hashed = _HASH_RE.match(key)
    if hashed:
        digest = hashed.group(1).lower()
    elif _KEY_RE.match(key):
        digest = _digest(key)
    else:
        # The message names the place, never the key.
        raise ApiKeysError(
            f"{where}: a key must be 16-512 printable characters without whitespace, ':', ',' or '#' "
            "(or sha256:<64 hex digits>)"
        )
    if not _NAME_RE.match(name):
        raise ApiKeysError(f"{where}: key name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    resolved = set()
    for raw in scopes:
        scope = _SCOPE_ALIASES.get(raw.strip(), raw.strip())
        if scope not in SCOPES:
            raise ApiKeysError(f"{where}: unknown scope {raw.strip()!r} (known: {', '.join(sorted(SCOPES))}, admin)")
        resolved.add(scope)
    if not resolved:
        raise ApiKeysError(f"{where}: key {name!r} has no scopes")
    return digest, Caller(name, frozenset(resolved))


def parse_keys_file_text(text: str, source: str) -> list[tuple[str, Caller]]:
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        parts = content.split()
        if len(parts) != 3:
            raise ApiKeysError(f"{source} line {number}: expected `KEY NAME SCOPES`, got {len(parts)} fields")
        key, name, scopes = parts
        entries.append(_parse_entry(key, name, scopes.split(","), f"{source} line {number}"))
    return entries


def parse_key_entries(entries: Iterable[str], source: str) -> list[tuple[str, Caller]]:
    parsed = []
    for index, entry in enumerate(entries, start=1):
        parts = entry.strip().split(":")
        if len(parts) == 4 and parts[0] == "sha256":
            parts = [f"sha256:{parts[1]}", parts[2], parts[3]]
        if len(parts) != 3:
            raise ApiKeysError(f"{source} entry {index}: expected KEY:NAME:SCOPE+SCOPE")
        key, name, scopes = parts
        parsed.append(_parse_entry(key, name, scopes.split("+"), f"{source} entry {index}"))
    return parsed


class KeyStore:
    """Known keys by the sha256 of the key, so the store holds no secret it could leak."""

    def __init__(self, entries: Iterable[tuple[str, Caller]]) -> None:
        self._by_digest: dict[str, Caller] = {}
        for digest, caller in entries:
            if digest in self._by_digest:
                raise ApiKeysError(
                    f"the same API key is configured twice (names {self._by_digest[digest].name!r} and {caller.name!r})"
                )
            self._by_digest[digest] = caller

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, key: str) -> Caller | None:
        return self._by_digest.get(_digest(key))


def load_key_store(keys_file: Path | None, entries: Iterable[str]) -> KeyStore:
    parsed = parse_key_entries(entries, "api_keys")
    if keys_file is not None:
        try:
            text = keys_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ApiKeysError(f"cannot read API keys file {keys_file}: {exc.strerror or exc}") from exc
        parsed += parse_keys_file_text(text, str(keys_file))
    return KeyStore(parsed)


def bearer_key(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The key in ``authorization: Bearer KEY``, None when there is no authorization entry."""
    values = [value for key, value in metadata if key.lower() == "authorization"]
    if not values:
        return None
    value = values[0]
    if len(values) > 1 or not isinstance(value, str):
        raise MissingCredentials("malformed authorization metadata: send exactly one 'authorization: Bearer <key>'")
    scheme, _, key = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise MissingCredentials("malformed authorization metadata: expected 'Bearer <key>'")
    return key.strip()


class Authenticator:
    """Turns call metadata into a :class:`Caller` allowed to call the method, or raises."""

    def __init__(self, store: KeyStore, required: bool) -> None:
        self._store = store
        self._required = required

    def authorize(self, full_method: str, metadata: Iterable[tuple[str, str | bytes]]) -> Caller:
        key = bearer_key(metadata)
        if key is None:
            if not self._required:
                return ANONYMOUS
            raise MissingCredentials(
                f"missing API key: send metadata 'authorization: Bearer <key>' to call {full_method}"
            )
        caller = self._store.lookup(key)
        if caller is None:
            raise UnknownApiKey("unknown API key")
        scope = required_scope(full_method)
        if not caller.allows(scope):
            raise ScopeDenied(f"API key {caller.name!r} lacks scope {scope!r} needed for {full_method}")
        return caller
