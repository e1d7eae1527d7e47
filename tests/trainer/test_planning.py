"""How a request's epochs and time limit become the schedule its workers run."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from trainer.planning import MAX_EPOCHS, SHORT_BUDGET_S, SHORT_SCHEDULE, STARTUP_ALLOWANCE_S, Planner, TrainRequest
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
