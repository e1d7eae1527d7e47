"""Secrets that daemons read from files (store passwords): never from flags, which `ps` shows."""

from __future__ import annotations

from pathlib import Path

from kit.config import ConfigError


def read_password(path: Path | None, what: str = "password") -> str | None:
    """The first line of ``path`` (None: no file given; the URL or DSN carries the password, if any).
    Errors name the file (``what`` it holds) and the reason, never its content."""
    if path is None:
        return None
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the {what} file {path} is not UTF-8 text") from exc
    if not lines or not lines[0].strip():
        raise ConfigError(f"the {what} file {path} is empty")
    return lines[0].strip()
