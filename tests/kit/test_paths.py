"""kit.paths.AllowedRoots: the one check every daemon applies to paths a request names."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from kit.paths import AllowedRoots, PathNotAllowed


def test_paths_are_resolved_before_the_check(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "out").symlink_to(outside)
    roots = AllowedRoots.of([root], "trainer", "--allowed-roots")
    assert roots.resolve(root / "sub" / ".." / "sub", "folder") == (root / "sub").resolve()
    assert roots.resolve(root / "missing", "folder") == (root / "missing").resolve()  # existence is the caller's
    for path in (outside, root / "out", root / "out" / "x", root / ".." / "outside"):
        with pytest.raises(PathNotAllowed, match="outside the trainer's allowed roots") as err:
            roots.resolve(path, "folder", field="dataset")
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED and err.value.reason == "PATH_NOT_ALLOWED"
        assert err.value.violations[0].field == "dataset"
        assert not roots.allows(path)
    assert roots.allows(root / "sub")


def test_without_roots_nothing_is_allowed_and_the_message_names_the_setting(tmp_path: Path) -> None:
    roots = AllowedRoots.of([], "ingestor", "--allowed-roots (CARMESH_INGESTOR_ALLOWED_ROOTS)")
    assert not roots.allows(tmp_path)
    with pytest.raises(PathNotAllowed, match=r"CARMESH_INGESTOR_ALLOWED_ROOTS\) setting is empty"):
        roots.resolve(tmp_path, "data set path")
