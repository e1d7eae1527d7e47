"""How a request's epochs and time limit become the schedule its workers run, and which server paths it may name."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from kit.paths import PathNotAllowed
from trainer.errors import BadRequest
from trainer.planning import (
    DEFAULT_EXPORT_PRECISION,
    MAX_EPOCHS,
    SHORT_BUDGET_S,
    SHORT_SCHEDULE,
    STARTUP_ALLOWANCE_S,
    Planner,
    TrainRequest,
)
from trainer.server import precision_name
from trainer_worker.loop import Recipe


def _planner(root: Path) -> Planner:
    return Planner(
        feature_addr="127.0.0.1:1", cache_dir=root / "cache", allowed_roots=(root,), max_workers=2, cpu_threads=2
    )


async def _recipe(tmp_path: Path, **request: int) -> dict[str, object]:
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    spec = await _planner(tmp_path).prepare("job-1", TrainRequest(dataset=str(folder), **request), lambda _: None)
    return spec.recipe


async def test_without_epochs_or_a_limit_the_job_runs_the_recipes_own_schedule(tmp_path: Path) -> None:
    recipe = await _recipe(tmp_path)
    assert "epochs" not in recipe and "time_budget_s" not in recipe
    assert Recipe().time_budget_s, "the default recipe is time-budgeted"


async def test_epochs_without_a_limit_train_every_epoch_by_steps(tmp_path: Path) -> None:
    recipe = await _recipe(tmp_path, epochs=300)
    assert recipe["epochs"] == 300 and recipe["time_budget_s"] is None


@pytest.mark.parametrize("epochs", [0, 40])
async def test_a_time_limit_sets_the_budget_and_epochs_only_cap_it(tmp_path: Path, epochs: int) -> None:
    recipe = await _recipe(tmp_path, epochs=epochs, max_duration_s=600)
    assert recipe["time_budget_s"] == 600 - STARTUP_ALLOWANCE_S
    assert recipe["epochs"] == (epochs or MAX_EPOCHS)


async def test_a_short_limit_gets_the_short_schedule_unless_the_request_sets_a_field(tmp_path: Path) -> None:
    assert set(SHORT_SCHEDULE) <= {f.name for f in fields(Recipe)}, "the workers build a Recipe from these"
    short = await _recipe(tmp_path, max_duration_s=int(SHORT_BUDGET_S + STARTUP_ALLOWANCE_S))
    for key, value in SHORT_SCHEDULE.items():
        assert short[key] == value, key
    asked = await _recipe(tmp_path, max_duration_s=480, batch_size=8, crop_width=320)
    assert asked["batch_size"] == 8 and asked["crop_width"] == 320
    assert all(asked[key] == value for key, value in SHORT_SCHEDULE.items() if key not in ("batch_size", "crop_width"))
    long = await _recipe(tmp_path, max_duration_s=int(SHORT_BUDGET_S + STARTUP_ALLOWANCE_S) + 1)
    assert not set(SHORT_SCHEDULE) & set(long), "a long job keeps the recipe's own defaults"


def test_init_checkpoints_and_folders_come_only_from_the_roots(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "data").mkdir(parents=True)
    outside.mkdir()
    (outside / "evil.pt").write_bytes(b"x")
    (root / "link.pt").symlink_to(outside / "evil.pt")
    (root / "ok.pt").write_bytes(b"x")
    planner = _planner(root)
    data = str(root / "data")
    for path in (outside / "evil.pt", root / "link.pt", root / ".." / "outside" / "evil.pt"):
        with pytest.raises(PathNotAllowed, match="outside the trainer's allowed roots"):
            planner.validate(TrainRequest(dataset=data, init_checkpoint=str(path)))
    with pytest.raises(PathNotAllowed, match="allowed roots"):
        planner.validate(TrainRequest(dataset=str(outside)))
    planner.validate(TrainRequest(dataset=data, init_checkpoint=str(root / "ok.pt")))
    # No roots: no request path at all, and the refusal names the setting an operator must set.
    closed = Planner(
        feature_addr="127.0.0.1:1", cache_dir=root / "cache", allowed_roots=(), max_workers=2, cpu_threads=2
    )
    with pytest.raises(PathNotAllowed, match="--allowed-roots"):
        closed.validate(TrainRequest(dataset=data))
    with pytest.raises(PathNotAllowed, match="--allowed-roots"):
        closed.validate(TrainRequest(dataset="apollo:1", init_checkpoint=str(root / "ok.pt")))


async def test_the_job_reads_the_checked_checkpoint_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "init.pt").write_bytes(b"x")
    request = TrainRequest(
        dataset=str(tmp_path / "data"), init_checkpoint=str(tmp_path / "data" / ".." / "models/init.pt")
    )
    spec = await _planner(tmp_path).prepare("job-1", request, lambda _: None)
    assert spec.init_checkpoint == str((tmp_path / "models" / "init.pt").resolve())


async def test_the_export_precision_defaults_to_int8_and_float32_can_be_asked_for(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    planner = _planner(tmp_path)
    default = await planner.prepare("job-1", TrainRequest(dataset=str(folder)), lambda _: None)
    assert default.export_precision == DEFAULT_EXPORT_PRECISION == "int8"
    asked = await planner.prepare("job-2", TrainRequest(dataset=str(folder), precision="float32"), lambda _: None)
    assert asked.export_precision == "float32"
    with pytest.raises(BadRequest, match="precision 'fp16'") as refused:
        planner.validate(TrainRequest(dataset=str(folder), precision="fp16"))
    assert refused.value.violations[0].field == "config.precision"


def test_the_proto_precision_maps_to_the_job_and_unknown_values_are_refused() -> None:
    assert [precision_name(v) for v in (0, 1, 2)] == ["", "float32", "int8"]
    with pytest.raises(BadRequest, match="unknown precision 99"):
        precision_name(99)
