"""Progress on stderr: a bar (redrawn in place on a terminal, a final line otherwise) and a live status line."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def plain_count(count: float) -> str:
    return f"{count:.0f}"


class ProgressBar:
    def __init__(
        self, label: str, total: int, stream: TextIO, width: int = 30, unit: Callable[[float], str] = human_bytes
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._stream = stream
        self._width = width
        self._unit = unit
        self._live = stream.isatty()
        self._last_draw = 0.0

    def line(self) -> str:
        fraction = min(1.0, self.done / self.total) if self.total else 1.0
        filled = round(fraction * self._width)
        bar = "#" * filled + "." * (self._width - filled)
        return f"{self.label} [{bar}] {fraction:4.0%} {self._unit(self.done)}/{self._unit(self.total)}"

    def advance(self, count: int) -> None:
        self.update(self.done + count)

    def update(self, done: int, total: int | None = None) -> None:
        """Sets the progress (and the total, when the server learns it as it goes)."""
        self.done = done
        if total is not None:
            self.total = total
        now = time.monotonic()
        # Redraw at most ~10 times a second: a terminal write per chunk would slow big uploads.
        if self._live and now - self._last_draw >= 0.1:
            self._last_draw = now
            self._stream.write("\r" + self.line())
            self._stream.flush()

    def finish(self) -> None:
        self._stream.write(("\r" if self._live else "") + self.line() + "\n")
        self._stream.flush()


class StatusLine:
    """One status line that changes over time: redrawn in place on a terminal; elsewhere
    (logs, CI) printed when it changes, at most every ``every_s`` seconds."""

    def __init__(self, stream: TextIO, every_s: float = 5.0) -> None:
        self._stream = stream
        self._live = stream.isatty()
        self._every_s = every_s
        self._last_text = ""
        self._last_print = float("-inf")
        self._width = 0

    def show(self, text: str) -> None:
        if self._live:
            self._stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
        else:
            now = time.monotonic()
            if text == self._last_text or now - self._last_print < self._every_s:
                return
            self._last_print = now
            self._stream.write(text + "\n")
        self._last_text = text
        self._stream.flush()

    def finish(self, text: str) -> None:
        if self._live:
            self._stream.write("\r" + text.ljust(self._width) + "\n")
        elif text != self._last_text:
            self._stream.write(text + "\n")
        self._stream.flush()
