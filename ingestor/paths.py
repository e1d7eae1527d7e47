"""Which server paths requests may read: reading arbitrary files through gRPC is refused
outside the configured allowed roots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ingestor.errors import BadRequest, PathNotAllowed, PathNotFound


class PathPolicy:
    def __init__(self, allowed_roots: Sequence[Path]) -> None:
        self.roots = [Path(root).expanduser().resolve() for root in allowed_roots]

    def allows(self, path: Path) -> bool:
        if not self.roots:
            return True
        # resolve() follows symlinks, so a link inside a root cannot lead outside it.
        resolved = path.resolve()
        return any(resolved.is_relative_to(root) for root in self.roots)

    def check(self, raw: str, what: str) -> Path:
        """The resolved path; PERMISSION_DENIED outside the roots (checked before existence, so
        nothing is revealed about other paths), NOT_FOUND when it does not exist."""
        if not raw.strip():
            raise BadRequest(f"{what} is empty: give an absolute path on the ingestor's machine")
        path = Path(raw).expanduser()
        if not path.is_absolute():
            raise BadRequest(f"{what} {raw!r} is relative: give an absolute path on the ingestor's machine")
        if not self.allows(path):
            roots = ", ".join(str(r) for r in self.roots)
            raise PathNotAllowed(
                f"{what} {raw!r} is outside the ingestor's allowed roots ({roots}); "
                "use a path under one of them or ask an operator to add it to --allowed-roots"
            )
        resolved = path.resolve()
        if not resolved.exists():
            raise PathNotFound(f"{what} {raw!r} does not exist on the ingestor's machine")
        return resolved
