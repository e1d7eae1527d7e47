"""Secrets that daemons read from files (store passwords): never from flags, which `ps` shows."""

from __future__ import annotations

from pathlib import Path

from kit.config import ConfigError


def read_password(path: Path | None) -> str | None:
    """The first line of ``path`` (None: no file given; the URL or DSN carries the password, if any).
    Errors name the file and the reason, never its content."""
    if path is None:
        return None
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the password file {path}: {exc.strerror}") from exc
    if not lines or not lines[0].strip():
        raise ConfigError(f"the password file {path} is empty")
    return lines[0].strip()
