"""``python -m trainer_worker --job-dir DIR``: one training worker process (``trainer_worker.worker``)."""

import sys

from trainer_worker.runtime import prefer_onednn

# TensorFlow reads the oneDNN switch once, when it loads: set it before the worker imports it.
prefer_onednn()

from trainer_worker.worker import main  # noqa: E402

sys.exit(main())
