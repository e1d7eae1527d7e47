"""What ``make soak`` measures and how it judges it: /proc samples of every process of the stack,
calls by status code, latency per minute, frames in vs stored, and the thresholds (issue 19, point 6).

Kept apart from the load (bench/soak.py) so the threshold logic is tested on its own.
"""

from __future__ import annotations

import os
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The carmesh daemons are held to the RSS and fd thresholds. The infrastructure is reported but
# not judged: Tansu's memory:// storage keeps every record by design, PostgreSQL and Redis grow
# with the rows and keys the load writes.
JUDGED = ("registry_gateway", "ingestor", "feature_service", "trainer", "detector", "tracker", "gateway")
# Start and end figures are medians of this many samples, so one sample caught mid-GC or
# mid-connection does not decide a growth figure.
EDGE_SAMPLES = 3


@dataclass(frozen=True)
class Thresholds:
    rss_growth_pct: float = 10.0
    # Open fds move with connections (a reconnecting channel, a PostgreSQL pool growing by one,
    # an MLflow request): "flat" means within this many fds of the start, whatever the run's length.
    fd_slack: int = 10


@dataclass(frozen=True)
class ProcSample:
    t_s: float  # seconds since the load started
    pid: int
    rss_kib: int
    fds: int


def read_proc(pid: int) -> tuple[int, int] | None:
    """(VmRSS in KiB, open fds) of ``pid``; None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]), fds
    return 0, fds  # a zombie has no VmRSS


def stack_pids(run_dir: Path) -> dict[str, int]:
    """Every process ``make up`` started, from RUN_DIR/pids/NAME.pid."""
    pids = {}
    for path in sorted((run_dir / "pids").glob("*.pid")):
        try:
            pids[path.stem] = int(path.read_text().strip())
        except (OSError, ValueError):
            continue
    return pids


@dataclass
class Growth:
    name: str
    pids: list[int]
    rss_start_kib: int
    rss_end_kib: int
    rss_max_kib: int
    fds_start: int
    fds_end: int
    fds_max: int
    samples: int

    @property
    def rss_growth_pct(self) -> float:
        return 100.0 * (self.rss_end_kib - self.rss_start_kib) / self.rss_start_kib if self.rss_start_kib else 0.0

    @property
    def fds_growth(self) -> int:
        return self.fds_end - self.fds_start


def growth(name: str, samples: list[ProcSample], warmup_s: float) -> Growth | None:
    """Start (the first samples after the warm-up) vs end (the last samples) of one process."""
    after = [s for s in samples if s.t_s >= warmup_s]
    if not after:
        return None
    head, tail = after[:EDGE_SAMPLES], after[-EDGE_SAMPLES:]
    return Growth(
        name=name,
        pids=sorted({s.pid for s in samples}),
        rss_start_kib=int(statistics.median(s.rss_kib for s in head)),
        rss_end_kib=int(statistics.median(s.rss_kib for s in tail)),
        rss_max_kib=max(s.rss_kib for s in after),
        fds_start=int(statistics.median(s.fds for s in head)),
        fds_end=int(statistics.median(s.fds for s in tail)),
        fds_max=max(s.fds for s in after),
        samples=len(after),
    )


@dataclass(frozen=True)
class Call:
    """One client call: which kind (detect, ingest, promote, ...), when, how long, how it ended."""

    kind: str
    t_s: float
    latency_ms: float
    code: str  # grpc.StatusCode name; "OK" when answered


@dataclass
class Frames:
    """One flow of frames: acknowledged to the client (or counted published by the source) vs rows."""

    flow: str
    camera: str
    acknowledged: int
    stored: int
    duplicates: int  # rows beyond one per seq
    missing: int  # acknowledged but not stored


@dataclass
class SoakReport:
    duration_s: float
    warmup_s: float
    promotion_window_s: float
    started_at: str
    processes: list[Growth]
    calls: list[Call]
    promotions: list[float]  # load-relative times of the SetAlias calls
    frames: list[Frames]
    died: list[str] = field(default_factory=list)  # processes gone or replaced during the run
    notes: list[str] = field(default_factory=list)
    samples: dict[str, list[ProcSample]] = field(default_factory=dict)  # every sample, warm-up included

    def in_promotion_window(self, t_s: float) -> bool:
        return any(p <= t_s <= p + self.promotion_window_s for p in self.promotions)

    def failures(self) -> tuple[Counter[str], Counter[str]]:
        """Failed calls by ``kind:CODE``: (UNAVAILABLE inside a promotion window, every other one)."""
        excused: Counter[str] = Counter()
        other: Counter[str] = Counter()
        for call in self.calls:
            if call.code == "OK":
                continue
            key = f"{call.kind}:{call.code}"
            if call.code == "UNAVAILABLE" and self.in_promotion_window(call.t_s):
                excused[key] += 1
            else:
                other[key] += 1
        return excused, other

    def latency_by_minute(self, kind: str) -> list[tuple[int, int, float, float]]:
        """(minute, calls, p50 ms, p99 ms) of the answered calls of ``kind``."""
        minutes: dict[int, list[float]] = {}
        for call in self.calls:
            if call.kind == kind and call.code == "OK":
                minutes.setdefault(int(call.t_s // 60), []).append(call.latency_ms)
        return [(m, len(v), percentile(v, 50), percentile(v, 99)) for m, v in sorted(minutes.items())]

    def to_json(self) -> dict[str, Any]:
        excused, other = self.failures()
        codes = Counter(f"{c.kind}:{c.code}" for c in self.calls)
        return {
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "promotion_window_s": self.promotion_window_s,
            "started_at": self.started_at,
            "processes": [
                {**asdict(g), "rss_growth_pct": round(g.rss_growth_pct, 2), "fds_growth": g.fds_growth}
                for g in self.processes
            ],
            "calls_by_code": dict(sorted(codes.items())),
            "failed_in_promotion_windows": dict(excused),
            "failed_other": dict(other),
            "latency_by_minute": {
                kind: [
                    {"minute": m, "calls": n, "p50_ms": round(p50, 1), "p99_ms": round(p99, 1)}
                    for m, n, p50, p99 in rows
                ]
                for kind in sorted({c.kind for c in self.calls})
                if (rows := self.latency_by_minute(kind))
            },
            "promotions_at_s": [round(p, 1) for p in self.promotions],
            "frames": [asdict(f) for f in self.frames],
            "died": self.died,
            "notes": self.notes,
            # [seconds since the load started, RSS KiB, open fds] per process: the shape of a growth.
            "samples": {
                name: [[round(x.t_s, 1), x.rss_kib, x.fds] for x in samples] for name, samples in self.samples.items()
            },
        }


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 200 calls is the 198th)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def violations(report: SoakReport, limits: Thresholds = Thresholds()) -> list[str]:
    """Every broken threshold, in words; empty when the soak passed."""
    found = [f"process {what}" for what in report.died]
    _, other = report.failures()
    found += [f"{count} failed {key} call(s) outside promotion windows" for key, count in sorted(other.items())]
    for g in report.processes:
        if g.name not in JUDGED:
            continue
        if g.rss_growth_pct >= limits.rss_growth_pct:
            found.append(
                f"{g.name}: RSS grew {g.rss_growth_pct:.1f}% after the warm-up "
                f"({g.rss_start_kib} -> {g.rss_end_kib} KiB; limit {limits.rss_growth_pct:g}%)"
            )
        if g.fds_growth > limits.fd_slack:
            found.append(f"{g.name}: open fds {g.fds_start} -> {g.fds_end} (slack {limits.fd_slack})")
    missing = [name for name in JUDGED if name not in {g.name for g in report.processes}]
    found += [f"{name}: never sampled after the warm-up" for name in missing]
    for f in report.frames:
        if f.stored != f.acknowledged or f.missing:
            found.append(f"{f.flow}: {f.acknowledged} frames acknowledged, {f.stored} stored, {f.missing} missing")
        if f.duplicates:
            found.append(f"{f.flow}: {f.duplicates} duplicate rows")
    if not report.frames:
        found.append("no frames flowed")
    if not any(c.kind == "detect" and c.code == "OK" for c in report.calls):
        found.append("no detect call answered")
    return found


def markdown(report: SoakReport, limits: Thresholds = Thresholds()) -> str:
    lines = [
        f"Soak of {report.duration_s:.0f} s (warm-up {report.warmup_s:.0f} s), started {report.started_at}; "
        f"{len(report.promotions)} promotions, UNAVAILABLE excused for {report.promotion_window_s:.0f} s after each.",
        "",
        "| process | pid | RSS start MiB | RSS end MiB | RSS max MiB | growth | fds start | fds end | fds max |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in report.processes:
        judged = "" if g.name in JUDGED else " (not judged)"
        pids = ",".join(map(str, g.pids))
        lines.append(
            f"| {g.name}{judged} | {pids} | {g.rss_start_kib / 1024:.1f} | {g.rss_end_kib / 1024:.1f} | "
            f"{g.rss_max_kib / 1024:.1f} | {g.rss_growth_pct:+.1f}% | {g.fds_start} | {g.fds_end} | {g.fds_max} |"
        )
    excused, other = report.failures()
    codes = Counter(f"{c.kind}:{c.code}" for c in report.calls)
    lines += [
        "",
        "| calls (kind:status) | count | failed in promotion windows | failed otherwise |",
        "|---|---:|---:|---:|",
    ]
    for key, count in sorted(codes.items()):
        lines.append(f"| {key} | {count} | {excused.get(key, 0)} | {other.get(key, 0)} |")
    lines += ["", "| kind | minute | calls | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
    for kind in sorted({c.kind for c in report.calls}):
        for minute, n, p50, p99 in report.latency_by_minute(kind):
            lines.append(f"| {kind} | {minute} | {n} | {p50:.1f} | {p99:.1f} |")
    lines += ["", "| frames | camera | acknowledged | stored | missing | duplicates |", "|---|---|---:|---:|---:|---:|"]
    for f in report.frames:
        lines.append(f"| {f.flow} | {f.camera} | {f.acknowledged} | {f.stored} | {f.missing} | {f.duplicates} |")
    broken = violations(report, limits)
    lines += ["", "Thresholds: " + ("all met" if not broken else "BROKEN")]
    lines += [f"- {v}" for v in broken]
    lines += [f"- note: {n}" for n in report.notes]
    return "\n".join(lines) + "\n"
