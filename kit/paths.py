"""Which server-side paths a request may name. Daemons that read files a request points at
(data set imports, folder and video sources, training folders, init checkpoints) read them only
under roots an operator configured: with no roots, reading request paths is off (a gRPC caller
must not be able to read any file the daemon can, such as its API keys)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kit.errors import PermissionDenied


class PathNotAllowed(PermissionDenied):
    """A path outside the configured allowed roots, or any path when none are configured."""

    reason = "PATH_NOT_ALLOWED"


@dataclass(frozen=True)
class AllowedRoots:
    """The directories (resolved) one daemon may read request paths under.

    ``daemon`` and ``setting`` name the daemon and its setting in refusals, so that the
    operator knows what to set (e.g. ``ingestor`` and ``--allowed-roots``).
    """

    roots: tuple[Path, ...]
    daemon: str
    setting: str

    @classmethod
    def of(cls, roots: Iterable[Path | str], daemon: str, setting: str = "--allowed-roots") -> AllowedRoots:
        return cls(tuple(Path(root).expanduser().resolve() for root in roots), daemon, setting)

    def allows(self, path: Path) -> bool:
        """Whether ``path``, after following symlinks and ``..``, lies under a root (never with no roots)."""
        resolved = path.expanduser().resolve()
        return any(resolved.is_relative_to(root) for root in self.roots)

    def resolve(self, path: Path | str, what: str, field: str | None = None) -> Path:
        """``path`` resolved (symlinks and ``..`` followed), or PathNotAllowed when it is outside the
        roots. Checked before existence, so a refusal reveals nothing about other paths; a relative
        path is taken from the daemon's working directory."""
        if not self.roots:
            raise PathNotAllowed(
                f"the {self.daemon} reads no server-side paths: its {self.setting} setting is empty. "
                f"An operator must set {self.setting} to the folders {what}s may come from",
                field=field,
            )
        resolved = Path(path).expanduser().resolve()
        if not any(resolved.is_relative_to(root) for root in self.roots):
            shown = ", ".join(str(root) for root in self.roots)
            raise PathNotAllowed(
                f"{what} {str(path)!r} is outside the {self.daemon}'s allowed roots ({shown}); "
                f"use a path under one of them or ask an operator to add it to {self.setting}",
                field=field,
            )
        return resolved
