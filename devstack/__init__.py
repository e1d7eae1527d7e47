"""The local stack: Redis, PostgreSQL, Tansu, MLflow and the carmesh daemons on 127.0.0.1.

Used by ``make up``/``make down`` and by the test fixtures; every process keeps its log
and pid under one run directory, and ``down`` leaves no orphans.
"""
