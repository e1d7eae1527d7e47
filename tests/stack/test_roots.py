"""`make up` gives the ingestor and trainer data roots (issue 16, hole 1): the data folders the
README and `make demo` use, never the run dir that holds the API keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack import services
from devstack.__main__ import config_from_env


def _roots(proc: services.Process) -> list[Path]:
    argv = list(proc.argv)
    return [Path(p) for p in argv[argv.index("--allowed-roots") + 1].split(",")]


def test_make_up_gives_the_daemons_data_roots_and_never_the_run_dir(tmp_path: Path) -> None:
    extra = tmp_path / "mine"
    extra.mkdir()
    cfg = services.StackConfig(run_dir=tmp_path / "run", ports=services.Ports(), extra_data_roots=(extra,))
    for proc in (services.ingestor(cfg), services.trainer(cfg)):
        roots = _roots(proc)
        assert (tmp_path / "run" / "data").resolve() in roots and extra.resolve() in roots
        assert (services.REPO_ROOT / "data") in roots
        # The demo and `make train` read the shared apollo-cars data through ../shared/data.
        assert (services.REPO_ROOT.parent / "shared" / "data").resolve() in roots
        assert all(not (tmp_path / "run" / "api-key").resolve().is_relative_to(root) for root in roots)


def test_extra_roots_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CARMESH_STACK_DATA_ROOTS", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert config_from_env().extra_data_roots == ((tmp_path / "a").resolve(), (tmp_path / "b").resolve())
