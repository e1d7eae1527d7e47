"""The sha256 of a file (the key of model files in every cache and the registry's ``carmesh.sha256``
tag), and frame ids."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file at ``path``, read in blocks so memory stays flat for large models."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# Hex characters of a frame id: 128 bits, so a second image with a chosen id is out of reach.
FRAME_ID_CHARS = 32


def derive_frame_id(namespace: Sequence[str], image: bytes) -> str:
    """The id of a frame: sha256 over its source namespace and its image bytes.

    Every producer of frames (IngestFrames, ImportDataset, the sources) names its frames with
    this, so an id can only be made by the source that owns the namespace: a client's namespace
    starts with ``client`` and its API key name, which it cannot choose, and can therefore never
    produce the id of an imported frame, whatever bytes it sends. The part count and each part's
    length go first, so no two different namespaces hash the same bytes."""
    digest = hashlib.sha256(len(namespace).to_bytes(8, "big"))
    for part in namespace:
        encoded = part.encode("utf-8", "surrogateescape")
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    digest.update(image)
    return digest.hexdigest()[:FRAME_ID_CHARS]
