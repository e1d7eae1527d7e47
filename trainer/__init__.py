"""Trainer daemon: trains car detectors on dataset snapshots and evaluates them."""
