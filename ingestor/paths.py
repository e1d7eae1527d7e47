"""Which server paths requests may read: reading files through gRPC is refused outside the
configured allowed roots, and refused altogether when none are configured (kit.paths)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ingestor.errors import BadRequest, PathNotFound
from kit.paths import AllowedRoots

SETTING = "--allowed-roots (CARMESH_INGESTOR_ALLOWED_ROOTS)"


class PathPolicy:
    def __init__(self, allowed_roots: Sequence[Path]) -> None:
        self._roots = AllowedRoots.of(allowed_roots, "ingestor", SETTING)

    @property
    def roots(self) -> tuple[Path, ...]:
        return self._roots.roots

    def allows(self, path: Path) -> bool:
        # resolve() follows symlinks, so a link inside a root cannot lead outside it.
        return self._roots.allows(path)

    def check(self, raw: str, what: str) -> Path:
        """The resolved path; PERMISSION_DENIED outside the roots or with none (checked before
        existence, so nothing is revealed about other paths), NOT_FOUND when it does not exist."""
        if not raw.strip():
            raise BadRequest(f"{what} is empty: give an absolute path on the ingestor's machine")
        path = Path(raw).expanduser()
        if not path.is_absolute():
            raise BadRequest(f"{what} {raw!r} is relative: give an absolute path on the ingestor's machine")
        resolved = self._roots.resolve(path, what)
        if not resolved.exists():
            raise PathNotFound(f"{what} {raw!r} does not exist on the ingestor's machine")
        return resolved
