"""Size-bounded caches of files on local disk, least recently used first out.

"Used" is the file's mtime: the caches touch a file when they hand it out, since atime is not
kept on relatime/noatime mounts. Files in ``keep`` (what is being served) and the newest file
(just written, about to be opened) are never removed, so a bound smaller than one model still
leaves the model being served on disk. Removing a file another task has open is safe on POSIX:
its open handle keeps reading the bytes."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trim:
    removed: tuple[Path, ...]
    removed_bytes: int
    kept_bytes: int  # what the cache holds afterwards


def touch(path: Path) -> None:
    """Marks ``path`` as just used (a missing file is no error: it was evicted meanwhile)."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)


def trim_lru(root: Path, pattern: str, max_bytes: int, keep: Collection[Path] = ()) -> Trim:
    """Removes the least recently used ``root/pattern`` files until they total ``max_bytes`` or less
    (0: no bound). Blocking: run it in a thread."""
    entries: list[tuple[float, int, Path]] = []
    for path in root.glob(pattern):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        entries.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in entries)
    if max_bytes <= 0 or total <= max_bytes or not entries:
        return Trim((), 0, total)
    entries.sort()
    protected = {p.resolve() for p in keep} | {entries[-1][2].resolve()}
    removed: list[Path] = []
    removed_bytes = 0
    for _, size, path in entries:
        if total <= max_bytes:
            break
        if path.resolve() in protected:
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot evict %s from the cache: %s", path, exc)
            continue
        total -= size
        removed_bytes += size
        removed.append(path)
    if total > max_bytes:
        log.warning("cache %s holds %d bytes over its %d-byte bound: all of it is in use", root, total, max_bytes)
    return Trim(tuple(removed), removed_bytes, total)
