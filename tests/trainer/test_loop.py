"""Single-process training on tiny synthetic data: the loss falls, checkpoints resume, stop is clean."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.trainer.synthetic import make_kitti
from trainer.data import load_folder
from trainer.modelspec import ModelSpec
from trainer.predict import nms
from trainer_worker.loop import Progress, Recipe, is_chief, train
from trainer_worker.predict import evaluate_on

TINY = Recipe(
    epochs=3,
    batch_size=4,
    samples_per_epoch=32,
    learning_rate=4e-3,
    warmup_steps=4,
    crop_width=64,
    crop_height=64,
    image_scale=1.0,
    zoom_min=0.9,
    zoom_max=1.1,
    ema_ramp_steps=4.0,
    loader_threads=1,
    time_budget_s=None,
)


@pytest.mark.timeout(300)
def test_loss_falls_stop_is_clean_and_training_resumes(tmp_path: Path) -> None:
    import tensorflow as tf

    data = load_folder(make_kitti(tmp_path / "ds", n_train=8, n_val=2), ["car"], ["van"])
    spec = ModelSpec("n", ("car",), 128, 96)
    strategy = tf.distribute.get_strategy()
    assert is_chief(strategy)
    first: list[Progress] = []
    # should_stop turns true during step 12 (epoch 1, its 4th step): training ends after that step.
    result = train(
        spec,
        TINY,
        data,
        strategy,
        tmp_path / "ck",
        first.append,
        lambda: len([p for p in first if p.epoch_metrics is None]) >= 11,
        evaluate_every_epochs=1,
    )
    steps = [p for p in first if p.epoch_metrics is None and not p.stopped_mid_epoch]
    assert first[-1].stopped_mid_epoch and first[-1].step == 12, "no last report of where the job stopped"
    assert result.stopped and result.epochs_completed == 1 and steps[-1].step == 12 and steps[-1].epoch == 1
    assert steps[-1].total_steps == 24 and len(result.history) == 1 and "val_map50" in result.history[0]

    # Resumes mid-epoch from the checkpoint written when stopped: step 13 of epoch 1, not from zero.
    second: list[Progress] = []
    result = train(spec, TINY, data, None, tmp_path / "ck", second.append, lambda: False, evaluate_every_epochs=0)
    more = [p for p in second if p.epoch_metrics is None]
    assert (more[0].step, more[0].epoch, more[-1].step) == (13, 1, 24)
    assert result.epochs_completed == 3 and not result.stopped and [h["epoch"] for h in result.history] == [2, 3]
    losses = [p.metrics["loss"] for p in steps + more]
    assert np.mean(losses[-6:]) < 0.7 * np.mean(losses[:6])
    assert {"loss", "box", "cls", "dfl", "lr", "images_per_s", "val_map50", "val_map50_95"} <= set(result.history[-1])
    report = evaluate_on(result.body, spec, data.val)
    assert report.map50 == result.history[-1]["val_map50"]


def test_nms_is_class_aware_and_thresholded() -> None:
    # Two overlapping boxes of class 0, one of class 1 on the same spot, one below the score threshold.
    cxcywh = np.array([[50, 50, 20, 20], [51, 50, 20, 20], [50, 50, 20, 20], [10, 10, 4, 4]], np.float32)
    scores = np.array([[0.9, 0.0], [0.8, 0.0], [0.0, 0.7], [0.001, 0.0]], np.float32)
    output = np.concatenate([cxcywh, scores], axis=1).T
    boxes, kept_scores, classes = nms(output, score_threshold=0.01, iou_threshold=0.45)
    assert kept_scores.tolist() == pytest.approx([0.9, 0.7]) and classes.tolist() == [0, 1]
    np.testing.assert_allclose(boxes[0], [40, 40, 60, 60])


def test_schedule_warms_up_then_follows_progress() -> None:
    import tensorflow as tf

    from trainer_worker.loop import WarmupCosine

    progress = tf.Variable(0.0)
    schedule = WarmupCosine(1e-2, warmup_steps=10, final_fraction=0.1, progress=progress)
    assert float(schedule(0)) == pytest.approx(1e-3) and schedule.value(4, 0.0) == pytest.approx(5e-3)
    for p, expected in ((0.0, 1e-2), (0.5, 5.5e-3), (1.0, 1e-3), (2.0, 1e-3)):
        progress.assign(p)
        assert float(schedule(50)) == pytest.approx(expected, rel=1e-5)
        assert schedule.value(50, p) == pytest.approx(expected, rel=1e-5)


@pytest.mark.timeout(240)
def test_time_budget_ends_training_annealed(tmp_path: Path) -> None:
    data = load_folder(make_kitti(tmp_path / "ds", n_train=4, n_val=1), ["car"], ["van"])
    spec = ModelSpec("n", ("car",), 64, 64)
    seen: list[Progress] = []
    # The first step (tracing included) spends the whole budget; the chief's progress reaches every worker
    # through the next step, after which training ends as complete (not stopped).
    recipe = Recipe(**{**TINY.__dict__, "time_budget_s": 1e-3, "warmup_steps": 1})
    result = train(spec, recipe, data, None, tmp_path / "ck", seen.append, lambda: False, evaluate_every_epochs=0)
    steps = [p for p in seen if p.epoch_metrics is None]
    assert [p.step for p in steps] == [1, 2] and not result.stopped and result.epochs_completed == 1
    assert "val_map50" in result.history[-1]
    again: list[Progress] = []
    result = train(spec, recipe, data, None, tmp_path / "ck", again.append, lambda: False, evaluate_every_epochs=0)
    assert not [p for p in again if p.epoch_metrics is None] and result.epochs_completed == 1


@pytest.mark.timeout(240)
def test_time_spent_between_steps_counts_against_the_budget(tmp_path: Path) -> None:
    """Validation and checkpoints take a job's wall time too: the schedule must end by its deadline."""
    data = load_folder(make_kitti(tmp_path / "ds", n_train=4, n_val=1), ["car"], ["van"])
    spec = ModelSpec("n", ("car",), 64, 64)
    now = [0.0]

    def clock() -> float:  # steps take no time on this clock; only the epoch end moves it
        return now[0]

    def on_progress(p: Progress) -> None:
        if p.epoch_metrics is not None:
            now[0] += 1000.0  # as if validating after epoch 1 took 1,000 s

    recipe = Recipe(**{**TINY.__dict__, "time_budget_s": 500.0, "warmup_steps": 1})
    result = train(
        spec, recipe, data, None, tmp_path / "ck", on_progress, lambda: False, evaluate_every_epochs=0, clock=clock
    )
    # Epoch 1's 8 steps took no time; the next step still runs on the progress it was given, and the one
    # after it sees the 1,000 s and ends the schedule: 2 steps into epoch 2, not 3 full epochs.
    assert result.epochs_completed == 2 and not result.stopped
    assert result.history[-1]["steps"] == 10
