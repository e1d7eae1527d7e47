"""One worker of a 2-worker MultiWorkerMirroredStrategy training run (tests only).

Usage: python -m tests.trainer.dist_worker DATA CHECKPOINT_DIR OUT_JSON EPOCHS STEP_DELAY_S (TF_CONFIG set).
Writes OUT_JSON with the first step it trained, its epochs, and a digest of the final EMA weights; appends
"epoch N" lines to OUT_JSON.progress as epochs end, so a test can kill it mid-run.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    import tensorflow as tf

    # MWMS must exist before any other TensorFlow op (it configures the collective runtime).
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import numpy as np

    from trainer.data import load_folder
    from trainer.modelspec import ModelSpec
    from trainer_worker.loop import Progress, Recipe, is_chief, train

    data_dir, ck_dir, out, epochs, delay_s = Path(argv[0]), Path(argv[1]), Path(argv[2]), int(argv[3]), float(argv[4])
    data = load_folder(data_dir, ["car"], ["van"])
    recipe = Recipe(
        epochs=epochs,
        batch_size=2,
        samples_per_epoch=12,
        learning_rate=4e-3,
        warmup_steps=2,
        crop_width=64,
        crop_height=64,
        image_scale=1.0,
        loader_threads=1,
        time_budget_s=None,
    )
    spec = ModelSpec("n", ("car",), 64, 64)
    steps: list[int] = []
    progress_file = out.with_suffix(".progress")

    def on_progress(p: Progress) -> None:
        if p.epoch_metrics is None:
            steps.append(p.step)
            time.sleep(delay_s)  # sleep is the test: slows the run so a test can kill it between checkpoints
        else:
            with progress_file.open("a") as f:
                f.write(f"epoch {int(p.epoch_metrics['epoch'])}\n")

    result = train(spec, recipe, data, strategy, ck_dir, on_progress, lambda: False, evaluate_every_epochs=0)
    digest = hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in result.body.get_weights())).hexdigest()
    out.write_text(
        json.dumps(
            {
                "chief": is_chief(strategy),
                "first_step": steps[0] if steps else None,
                "last_step": steps[-1] if steps else None,
                "epochs_completed": result.epochs_completed,
                "digest": digest,
                "replicas": strategy.num_replicas_in_sync,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
