"""The short version of `make bench-track`: one seed, the section written where asked."""

from __future__ import annotations

from bench.common import write_section
from bench.track import report


def test_bench_track_writes_its_table(tmp_path):
    text = report(seeds=1)
    assert "| exact boxes | 1/1 |" in text
    assert "raw ByteTrack" in text and "CameraTracker, 8 lines + 8 zones" in text
    doc = tmp_path / "tracking.md"
    doc.write_text("# Tracking\n")
    write_section(doc, "bench-track", text)
    assert "<!-- bench-track:start -->\n## Measured" in doc.read_text()
