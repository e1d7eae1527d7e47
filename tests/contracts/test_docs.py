"""The docs hold together: every relative link in the README and docs/ points to a file in the
repository (and to a heading there, when it names one), and the daemon table the README and
docs/architecture.md give (module, env prefix, ports) is what the daemons use."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([REPO_ROOT / "README.md", *REPO_ROOT.glob("docs/*.md"), *REPO_ROOT.glob("*/README.md")])

_FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", flags=re.M)
_TABLE_HEADER = "| daemon | module | env prefix | gRPC port | metrics port |"


def _prose(text: str) -> str:
    """The text without fenced blocks and inline code, where a `[x](y)` is not a link."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def anchors(markdown: str) -> set[str]:
    """The heading anchors GitHub makes: lower case, punctuation dropped, spaces to hyphens, -N for repeats."""
    seen: dict[str, int] = {}
    found = set()
    for title in _HEADING.findall(_FENCE.sub("", markdown)):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link in a heading anchors by its text
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def test_the_anchor_rule_matches_githubs() -> None:
    got = anchors("# A `b` c\n## 7. Same-budget (`python -m bench.recipe`)\n## Export size: x (2026-12-05)\n# A b c\n")
    assert got == {"a-b-c", "7-same-budget-python--m-benchrecipe", "export-size-x-2026-12-05", "a-b-c-1"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_point_into_the_repository(doc: Path) -> None:
    broken = []
    for target in _LINK.findall(_prose(doc.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.is_relative_to(REPO_ROOT):
            broken.append(f"{target}: outside the repository")
        elif not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path.read_text()):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{doc.relative_to(REPO_ROOT)}: " + "; ".join(broken)


def daemon_table(doc: Path) -> dict[str, tuple[str, str, int, int]]:
    lines = doc.read_text().splitlines()
    assert _TABLE_HEADER in lines, f"{doc.name} has no table starting {_TABLE_HEADER}"
    rows = {}
    for line in lines[lines.index(_TABLE_HEADER) + 2 :]:
        if not line.startswith("|"):
            break
        name, module, prefix, grpc_port, metrics_port = (cell.strip().strip("`") for cell in line.strip("|").split("|"))
        rows[name] = (module, prefix, int(grpc_port), int(metrics_port))
    return rows


@pytest.mark.parametrize("doc", ["README.md", "docs/architecture.md"])
def test_the_daemon_table_gives_each_daemons_prefix_and_ports(doc: str) -> None:
    table = daemon_table(REPO_ROOT / doc)
    daemons = {"gateway", "detector", "ingestor", "feature_service", "registry_gateway", "trainer", "tracker"}
    assert set(table) == daemons
    for name, (module, prefix, grpc_port, metrics_port) in table.items():
        assert (REPO_ROOT / module / "__main__.py").is_file(), f"{name}: `python -m {module}` has no __main__"
        sources = "".join(p.read_text() for p in (REPO_ROOT / module).rglob("*.py"))
        assert f'"{prefix}"' in sources, f"{name}: no {prefix} in the {module} package"
        settings = importlib.import_module(f"{module}.config").Settings
        defaults = (settings.model_fields["grpc_port"].default, settings.model_fields["metrics_port"].default)
        assert defaults == (grpc_port, metrics_port), f"{name}: {defaults} in code, {doc} says otherwise"
