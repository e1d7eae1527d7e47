"""The trainer's TensorFlow workload: ``python -m trainer_worker --job-dir DIR`` (see ``worker``).

The daemon (``trainer``) never imports this package; both sides share ``trainer.jobspec``,
``trainer.events`` and ``trainer.phases``.
"""
