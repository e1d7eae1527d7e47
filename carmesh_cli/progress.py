"""A one-line progress bar on stderr (redrawn in place on a terminal, a final line otherwise)."""

from __future__ import annotations

import time
from typing import TextIO


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


class ProgressBar:
    def __init__(self, label: str, total: int, stream: TextIO, width: int = 30) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._stream = stream
        self._width = width
        self._live = stream.isatty()
        self._last_draw = 0.0

    def _line(self) -> str:
        fraction = self.done / self.total if self.total else 1.0
        filled = round(fraction * self._width)
        bar = "#" * filled + "." * (self._width - filled)
        return f"{self.label} [{bar}] {fraction:4.0%} {human_bytes(self.done)}/{human_bytes(self.total)}"

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        # Redraw at most ~10 times a second: a terminal write per chunk would slow big uploads.
        if self._live and now - self._last_draw >= 0.1:
            self._last_draw = now
            self._stream.write("\r" + self._line())
            self._stream.flush()

    def finish(self) -> None:
        self._stream.write(("\r" if self._live else "") + self._line() + "\n")
        self._stream.flush()
