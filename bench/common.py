"""What the benchmarks share: free ports and updating one marked section of docs/benchmarks.md."""

from __future__ import annotations

import socket
from pathlib import Path

HEADER = "# Benchmarks\n\nNumbers measured on this project's machines, each with the command that made it.\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_section(path: Path, name: str, body: str) -> None:
    """Replaces the ``<!-- NAME:start -->`` .. ``<!-- NAME:end -->`` section (appends it when absent)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else HEADER
    if start in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
