"""Prints the requirements of carmesh's base install plus the given extras, one per line.

Images install these in a layer of their own, before the source is copied, so a change to the
code reuses the layer and only a change to pyproject.toml downloads dependencies again. Runs on
the bare base image's Python (3.11+: tomllib), so it imports nothing outside the standard library.

    python3 requirements.py pyproject.toml [EXTRA...]            (no extra: the base install)
    python3 requirements.py --version pyproject.toml     (the project's version)
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# "carmesh[trainer]" inside an extra: the project naming its own extras.
_SELF = re.compile(r"^\s*(?P<name>[A-Za-z0-9._-]+)\s*\[(?P<extras>[^\]]+)\]\s*$")


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    wanted = list(extras)
    seen: set[str] = set()
    out: list[str] = list(project.get("dependencies", []))
    while wanted:
        extra = wanted.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"requirements.py: {pyproject} has no extra {extra!r} (has: {', '.join(optional)})")
        seen.add(extra)
        for requirement in optional[extra]:
            own = _SELF.match(requirement)
            if own and own["name"] == project["name"]:
                wanted.extend(item.strip() for item in own["extras"].split(","))
            elif requirement not in out:
                out.append(requirement)
    return out


def version(pyproject: Path) -> str:
    return str(tomllib.loads(pyproject.read_text())["project"]["version"])


def main(argv: list[str]) -> int:
    if not argv or (argv[0] == "--version" and len(argv) != 2):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "--version":
        print(version(Path(argv[1])))
        return 0
    print("\n".join(requirements(Path(argv[0]), argv[1:])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
