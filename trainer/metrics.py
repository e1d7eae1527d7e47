"""The trainer's own metrics, on the daemon's kit registry next to the per-RPC ones.

Jobs by state and the duration of finished jobs are read from the job records at each scrape,
so they include the jobs of earlier daemon runs (kept in the work directory) and need no hook
in the job manager."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from kit.metrics import Metrics
from trainer.jobs import JobRecord, State

# From a job that fails while fetching its data to a day-long training run.
JOB_BUCKETS_S = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0)


class TrainerMetrics:
    def __init__(self, metrics: Metrics, jobs: Callable[[], Iterable[JobRecord]]) -> None:
        metrics.registry.register(_JobsCollector(jobs))
        self.jobs_resumed = Counter(
            "carmesh_trainer_jobs_resumed_total",
            "Jobs of an earlier daemon run resumed from their last checkpoint at start-up",
            registry=metrics.registry,
        )


def _histogram_buckets(durations_s: Sequence[float]) -> list[tuple[str, float]]:
    """Cumulative counts per upper bound, as the exposition format wants them."""
    buckets = [(str(bound), float(sum(1 for d in durations_s if d <= bound))) for bound in JOB_BUCKETS_S]
    return [*buckets, ("+Inf", float(len(durations_s)))]


class _JobsCollector(Collector):
    def __init__(self, jobs: Callable[[], Iterable[JobRecord]]) -> None:
        self._jobs = jobs

    def collect(self) -> Iterator[Metric]:
        records = list(self._jobs())
        by_state = GaugeMetricFamily(
            "carmesh_trainer_jobs", "Training jobs this daemon knows, by state", labels=["state"]
        )
        for state in State:
            by_state.add_metric([state.name.lower()], float(sum(1 for job in records if job.state is state)))
        yield by_state

        seconds = HistogramMetricFamily(
            "carmesh_trainer_job_seconds",
            "Wall time of finished training jobs, from start to their final state, by final state",
            labels=["state"],
        )
        for state in (s for s in State if s.done):
            durations_s = [
                max(0.0, job.finished_at - job.started_at) for job in records if job.state is state and job.finished_at
            ]
            seconds.add_metric([state.name.lower()], _histogram_buckets(durations_s), sum_value=sum(durations_s))
        yield seconds

    def describe(self) -> Iterator[Metric]:
        # Described without reading the jobs, so registering does not depend on them.
        yield GaugeMetricFamily("carmesh_trainer_jobs", "", labels=["state"])
        yield HistogramMetricFamily("carmesh_trainer_job_seconds", "", labels=["state"])
