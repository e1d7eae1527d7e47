"""Running sources survive a restart: their definitions and positions in a local state file.

``<state_dir>/sources.json`` lists every source that is running (not the stopped, finished or
failed ones) with the position up to which the broker acknowledged all of its frames. It is
rewritten atomically (a temporary file, fsync, rename, fsync of the folder), so a kill -9 leaves
the old or the new version, never a torn one. A source resumes from that position: frames handed
to the broker after it may be published again, under the same frame ids (derived from the source
and the bytes), which the feature_service stores once. A stream's URL is kept as given, password
included, so the file is readable by its owner only (0600).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATE_FILE = "sources.json"
_VERSION = 1
_KINDS = frozenset({"folder", "video", "stream"})


@dataclass(frozen=True)
class Position:
    """Where a source goes on from: everything before it is acknowledged by the broker."""

    rounds: int = 0  # completed passes over the folder or video (loop)
    index: int = 0  # video: frames of this pass already read
    after: str = ""  # folder: the last file of this pass already handled ("" at a pass's start)
    seq: int = 0  # the seq of the next frame


@dataclass(frozen=True)
class SavedSource:
    source_id: str
    kind: str
    uri: str  # as the client gave it (a stream's password included: the file is 0600)
    camera_id: str
    max_fps: float
    loop: bool
    position: Position = field(default_factory=Position)


class StateError(ValueError):
    """A state file that cannot be read back (not ours, or damaged by hand)."""


def _saved(entry: Any) -> SavedSource:
    if not isinstance(entry, dict):
        raise StateError(f"a source entry is a {type(entry).__name__}, not an object")
    pos = entry.get("position") or {}
    try:
        saved = SavedSource(
            source_id=str(entry["source_id"]),
            kind=str(entry["kind"]),
            uri=str(entry["uri"]),
            camera_id=str(entry["camera_id"]),
            max_fps=float(entry["max_fps"]),
            loop=bool(entry["loop"]),
            position=Position(
                rounds=int(pos.get("rounds", 0)),
                index=int(pos.get("index", 0)),
                after=str(pos.get("after", "")),
                seq=int(pos.get("seq", 0)),
            ),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StateError(f"a source entry is incomplete or mistyped: {exc!r}") from None
    if saved.kind not in _KINDS:
        raise StateError(f"source {saved.source_id!r} has kind {saved.kind!r}")
    p = saved.position
    if min(p.rounds, p.index, p.seq) < 0:
        raise StateError(f"source {saved.source_id!r} has a negative position {p}")
    return saved


class StateStore:
    """Reads and atomically rewrites ``sources.json`` (blocking: call from a thread)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE

    def load(self) -> list[SavedSource]:
        """The saved sources; a damaged file is moved aside (``.damaged-<time>``) and read as empty,
        so the ingestor still starts (its error log names the file to inspect)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("version") != _VERSION:
                raise StateError(f"not a version {_VERSION} source state file")
            entries = data.get("sources")
            if not isinstance(entries, list):
                raise StateError("'sources' is not a list")
            return [_saved(e) for e in entries]
        except (ValueError, StateError) as exc:  # json.JSONDecodeError is a ValueError
            aside = self.path.with_name(f"{STATE_FILE}.damaged-{int(time.time())}")
            os.replace(self.path, aside)
            log.error("source state %s unreadable (%s): moved to %s, no source resumed", self.path, exc, aside)
            return []

    def write(self, sources: list[SavedSource]) -> None:
        payload = json.dumps({"version": _VERSION, "sources": [asdict(s) for s in sources]}, indent=1)
        self.directory.mkdir(parents=True, exist_ok=True)
        # A name of its own per write (0600 from the start): two writes never share a file.
        fd, tmp = tempfile.mkstemp(prefix=f".{STATE_FILE}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        # The rename itself is durable only once the folder is synced.
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class Watermark:
    """The position after the longest run of acknowledged frames, in the order they were handed over.

    Each frame handed to the publisher takes a ticket with the position after it; acknowledgements
    may come out of order (re-sends), so the committed position only moves past frames all of whose
    predecessors are acknowledged too. A frame refused for good counts as done (it is reported, and
    sending it again cannot help)."""

    def __init__(self, start: Position, on_move: Callable[[], None] | None = None) -> None:
        self.committed = start
        self._on_move = on_move
        self._pending: OrderedDict[int, tuple[Position, bool]] = OrderedDict()
        self._next = 0
        self._drained = asyncio.Event()
        self._drained.set()

    def hand(self, after: Position) -> int:
        ticket = self._next
        self._next += 1
        self._pending[ticket] = (after, False)
        self._drained.clear()
        return ticket

    def done(self, ticket: int) -> None:
        entry = self._pending.get(ticket)
        if entry is None:
            return
        self._pending[ticket] = (entry[0], True)
        moved = False
        while self._pending:
            first = next(iter(self._pending))
            position, finished = self._pending[first]
            if not finished:
                break
            del self._pending[first]
            self.committed, moved = position, True
        if moved and self._on_move is not None:
            self._on_move()
        if not self._pending:
            self._drained.set()

    def skip(self, after: Position) -> None:
        """A step that publishes nothing (an unreadable file, a pass's end) but moves the position."""
        self.done(self.hand(after))

    async def drained(self) -> None:
        """Waits until every frame handed over is acknowledged (or refused for good)."""
        await self._drained.wait()
