"""buf breaking: the protos change only compatibly since the newest release in protos/releases/.

Each release's API is committed as a buf image (``make proto-release VERSION=x.y.z``), so the
check needs no git tags (CI clones often carry none). A planned break is a new release: listed
in CHANGELOG.md, then frozen with ``make proto-release``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO_ROOT

RELEASES = REPO_ROOT / "protos" / "releases"
_RELEASE_NAME = re.compile(r"^v(\d+)\.(\d+)\.(\d+)\.binpb$")


def _buf() -> str:
    buf = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    assert buf, "buf not installed (buf-bin is in the dev extra)"
    return buf


def _releases() -> list[Path]:
    """Release images, oldest first (by version number, not by name: v0.10.0 follows v0.9.0)."""
    images = list(RELEASES.glob("*.binpb"))
    odd = [p.name for p in images if not _RELEASE_NAME.match(p.name)]
    assert not odd, f"protos/releases/ holds only vX.Y.Z.binpb images, not {odd}"
    return sorted(images, key=lambda p: tuple(int(n) for n in _RELEASE_NAME.findall(p.name)[0]))


def _breaking(against: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_buf(), "breaking", "--against", str(against)], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )


def test_protos_do_not_break_the_newest_release() -> None:
    releases = _releases()
    assert releases and releases[0].name == "v0.1.0.binpb", "v0.1.0, the first release, must stay in protos/releases/"
    done = _breaking(releases[-1])
    assert done.returncode == 0, (
        f"the protos break {releases[-1].name}; keep the change compatible, or plan a release: list it in "
        f"CHANGELOG.md and run `make proto-release VERSION=x.y.z`\n{done.stdout}{done.stderr}"
    )


def test_the_check_sees_a_break() -> None:
    # v0.1.0 had ListDatasets, which 0.2.0 renamed: buf must report it, or the check above proves nothing.
    done = _breaking(RELEASES / "v0.1.0.binpb")
    assert done.returncode != 0 and 'RPC "ListDatasets"' in done.stdout, done.stdout + done.stderr
