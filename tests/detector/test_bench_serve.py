"""`make bench-serve`'s short version: three of its paths (the detector, its KServe v2 endpoint and
Triton called directly) with a few requests each write their rows, ratios and notes into a benchmarks file."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import serve
from tests.triton_support import triton_python

pytestmark = [pytest.mark.integration]


def test_bench_serve_writes_its_table(shared_dir: Path, tmp_path: Path) -> None:
    triton_python()  # skips (or fails in CI) without .venv-triton
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n<!-- other:start -->\nkept\n<!-- other:end -->\n")
    code = serve.main(
        [
            "--count",
            "4",
            "--concurrency",
            "1,2",
            "--paths",
            "carmesh detector (ONNX,carmesh KServe,Triton direct",
            "--write",
            str(out),
        ]
    )
    assert code == 0
    text = out.read_text()
    assert "kept" in text and "<!-- bench-serve:start -->" in text
    rows = [line for line in text.splitlines() if line.startswith("| carmesh") or line.startswith("| Triton")]
    assert len(rows) == 6, text
    assert "| carmesh KServe v2 endpoint (tritonclient) | 2 |" in text
    assert "| carmesh detector (ONNX Runtime) | 1 |" in text and "| Triton direct (tritonclient) | 2 |" in text
    assert "1.00x" in text
