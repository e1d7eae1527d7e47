"""The sha256 of a file, the key of model files in every cache and the registry's ``carmesh.sha256`` tag."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file at ``path``, read in blocks so memory stays flat for large models."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
