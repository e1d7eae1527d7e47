"""The soak's thresholds (bench/soak_report.py) on made-up reports: each broken threshold is found."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bench.soak_report import (
    JUDGED,
    Call,
    Frames,
    ProcSample,
    SoakReport,
    Thresholds,
    growth,
    markdown,
    percentile,
    read_proc,
    stack_pids,
    violations,
)


def _flat(name: str, rss_kib: int = 100_000, fds: int = 40) -> list[ProcSample]:
    return [ProcSample(float(t), 1000, rss_kib, fds) for t in range(0, 120, 5)]


def _report(**changes: object) -> SoakReport:
    processes = [g for name in (*JUDGED, "tansu") if (g := growth(name, _flat(name), 30.0)) is not None]
    base = SoakReport(
        duration_s=120.0,
        warmup_s=30.0,
        promotion_window_s=20.0,
        started_at="now",
        processes=processes,
        calls=[Call("detect", float(t), 50.0 + t, "OK") for t in range(120)],
        promotions=[60.0],
        frames=[Frames("folder", "cam-f", 100, 100, 0, 0), Frames("client", "cam-c", 50, 50, 0, 0)],
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_clean_report_passes_and_renders() -> None:
    report = _report()
    assert violations(report) == []
    text = markdown(report)
    assert "Thresholds: all met" in text
    assert "| tansu (not judged) |" in text
    assert report.to_json()["failed_other"] == {}
    with_samples = _report(samples={"gateway": [ProcSample(1.04, 9, 100, 20)]})
    assert with_samples.to_json()["samples"] == {"gateway": [[1.0, 100, 20]]}


def test_unavailable_inside_a_promotion_window_is_excused_and_counted_apart() -> None:
    calls = [*_report().calls, Call("detect", 65.0, 3.0, "UNAVAILABLE")]
    report = _report(calls=calls)
    excused, other = report.failures()
    assert excused == {"detect:UNAVAILABLE": 1} and not other
    assert violations(report) == []


def test_unavailable_outside_a_window_and_any_other_failure_break_it() -> None:
    calls = [*_report().calls, Call("detect", 85.0, 3.0, "UNAVAILABLE"), Call("ingest", 65.0, 3.0, "INTERNAL")]
    broken = violations(_report(calls=calls))
    assert broken == [
        "1 failed detect:UNAVAILABLE call(s) outside promotion windows",
        "1 failed ingest:INTERNAL call(s) outside promotion windows",
    ]


def test_rss_growth_over_ten_percent_of_a_daemon_breaks_it_but_not_of_the_infrastructure() -> None:
    def leaking(name: str, end_kib: int) -> list[ProcSample]:
        samples = _flat(name)
        return samples[:-3] + [replace(s, rss_kib=end_kib) for s in samples[-3:]]

    just_under = growth("detector", leaking("detector", 109_900), 30.0)
    over = growth("detector", leaking("detector", 110_000), 30.0)
    tansu = growth("tansu", leaking("tansu", 500_000), 30.0)
    assert just_under and over and tansu
    others = [g for g in _report().processes if g.name not in ("detector", "tansu")]
    assert violations(_report(processes=[*others, just_under, tansu])) == []
    broken = violations(_report(processes=[*others, over, tansu]))
    assert len(broken) == 1 and broken[0].startswith("detector: RSS grew 10.0%"), broken


def test_warm_up_samples_do_not_count_and_one_odd_sample_does_not_decide() -> None:
    samples = _flat("gateway")
    samples[0] = replace(samples[0], rss_kib=10_000)  # during the warm-up
    samples[-1] = replace(samples[-1], rss_kib=900_000)  # one spike: the median of the last three holds
    got = growth("gateway", samples, 30.0)
    assert got is not None and got.rss_start_kib == 100_000 and got.rss_end_kib == 100_000
    assert got.rss_max_kib == 900_000


def test_fds_may_move_within_the_slack_only() -> None:
    def fds(end: int) -> list[ProcSample]:
        samples = _flat("ingestor")
        return samples[:-3] + [replace(s, fds=end) for s in samples[-3:]]

    slack = Thresholds().fd_slack
    others = [g for g in _report().processes if g.name != "ingestor"]
    ok, leak = growth("ingestor", fds(40 + slack), 30.0), growth("ingestor", fds(41 + slack), 30.0)
    assert ok and leak
    assert violations(_report(processes=[*others, ok])) == []
    assert violations(_report(processes=[*others, leak])) == [f"ingestor: open fds 40 -> {41 + slack} (slack {slack})"]


def test_frames_lost_or_stored_twice_break_it() -> None:
    lost = Frames("client", "cam-c", 50, 49, 0, 1)
    twice = Frames("folder", "cam-f", 100, 100, 2, 0)
    assert violations(_report(frames=[lost, twice])) == [
        "client: 50 frames acknowledged, 49 stored, 1 missing",
        "folder: 2 duplicate rows",
    ]
    assert violations(_report(frames=[])) == ["no frames flowed"]


def test_a_process_that_died_or_was_never_sampled_breaks_it() -> None:
    report = _report(died=["detector (pid 7) gone or replaced at 40 s"])
    assert violations(report) == ["process detector (pid 7) gone or replaced at 40 s"]
    without = [g for g in _report().processes if g.name != "tracker"]
    assert violations(_report(processes=without)) == ["tracker: never sampled after the warm-up"]
    assert "no detect call answered" in violations(_report(calls=[]))


def test_latency_per_minute_uses_nearest_rank_percentiles() -> None:
    rows = _report().latency_by_minute("detect")
    assert [(m, n) for m, n, _, _ in rows] == [(0, 60), (1, 60)]
    assert rows[0][2] == 79.0 and rows[0][3] == 109.0  # 50..109 ms: the 30th and the 60th (ceil(59.4))
    assert percentile([], 99) == 0.0 and percentile([5.0], 50) == 5.0


def test_proc_sampling_reads_this_process_and_the_pid_files(tmp_path: Path) -> None:
    import os

    got = read_proc(os.getpid())
    assert got is not None and got[0] > 0 and got[1] > 0
    assert read_proc(2**22 + 1) is None  # above pid_max: never a process
    (tmp_path / "pids").mkdir()
    (tmp_path / "pids" / "gateway.pid").write_text(f"{os.getpid()}\n")
    (tmp_path / "pids" / "broken.pid").write_text("x")
    assert stack_pids(tmp_path) == {"gateway": os.getpid()}
