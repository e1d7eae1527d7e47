"""Trainer daemon: trains car detectors on dataset snapshots and evaluates them.

Free of TensorFlow: training runs in ``trainer_worker`` processes the daemon starts (``trainer.jobs``).
"""
