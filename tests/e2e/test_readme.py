"""The README's main command, run exactly as written on a clean run directory, as a new user runs it.

The README gives `make setup && make demo` (train a model first) and, under "Bringing a model",
`make demo MODEL=../shared/models/yolox_nano.onnx`. Both are read out of README.md (so a README
edit that breaks them fails here) and run through bash in the repository, each with its own run
directory and ports; the only differences from a user's shell are `CARMESH_STACK_RUN_DIR`,
`CARMESH_STACK_PORT_OFFSET`, `DEMO_OUT` (where the annotated image goes) and, for the train-first
path, `DEMO_TRAIN` (a short budget, so the suite stays fast: `make demo`'s own 8 minutes are
measured in docs/training.md). After each, `make down` must leave no process behind.

Which test covers each of the other commands of the README's "Using it" section is listed in
tests/e2e/readme_coverage.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from devstack.services import free_port_offset
from tests.helpers import REPO_ROOT, SHARED

pytestmark = pytest.mark.e2e

YOLOX_NANO = SHARED / "models" / "yolox_nano.onnx"
APOLLO = SHARED / "data" / "apollo-cars"


def readme_commands() -> list[str]:
    """Every command line of the README's fenced bash blocks, comments stripped."""
    text = (REPO_ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            command = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
            if command:
                lines.append(command)
    return lines


def readme_demo_with_model() -> str:
    """The README's `make demo MODEL=...` example (written inline in "Bringing a model")."""
    text = (REPO_ROOT / "README.md").read_text()
    found = re.findall(r"`(make demo MODEL=\S+\.onnx)`", text)
    assert found, "README.md no longer shows `make demo MODEL=....onnx`"
    return found[0]


@dataclass
class Run:
    env: dict[str, str]
    run_dir: Path
    out_dir: Path

    def bash(self, command: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )


@pytest.fixture
def clean_run() -> Iterator[Run]:
    """A new run directory and port range; `make down` at the end, which must leave nothing running."""
    run_dir = Path(tempfile.mkdtemp(prefix="carmesh-readme-"))
    os.chmod(run_dir, 0o755)  # PostgreSQL runs as its own user and must reach its data folder
    out_dir = run_dir / "out"
    env = {
        **os.environ,
        "CARMESH_STACK_RUN_DIR": str(run_dir),
        "CARMESH_STACK_PORT_OFFSET": str(free_port_offset(range(11050, 14400, 89))),
        "DEMO_OUT": str(out_dir),
    }
    for name in ("CARMESH_API_KEY", "CARMESH_GATEWAY", "MODEL", "IMAGE", "VENV"):
        env.pop(name, None)
    run = Run(env, run_dir, out_dir)
    try:
        yield run
    finally:
        running = [int(p.read_text()) for p in (run_dir / "pids").glob("*.pid")]
        down = run.bash("make down", 120)
        pid_files = list((run_dir / "pids").glob("*.pid"))
        alive = [pid for pid in running if _alive(pid)]
        shutil.rmtree(run_dir, ignore_errors=True)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not pid_files, f"make down left pid files: {pid_files}"
        assert not alive, f"make down left processes running: {alive}"


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _detections(stdout: str) -> list[tuple[str, float]]:
    """(class, score) rows of `carmesh detect`'s table as the demo prints it."""
    number = r"\s+-?\d+\.\d"
    rows = re.findall(rf"^\s+(\S+)\s+(\d\.\d{{3}}){number * 4}\s*$", stdout, flags=re.M)
    return [(name, float(score)) for name, score in rows]


def _annotated(run: Run, stdout: str, started: float) -> Path:
    match = re.search(r"demo: done\. The cars found are boxed in (\S+)", stdout)
    assert match, f"the demo does not say where the annotated image is:\n{stdout[-3000:]}"
    path = Path(match.group(1))
    path = path if path.is_absolute() else REPO_ROOT / path
    assert path.is_relative_to(run.out_dir), f"{path} is not under DEMO_OUT {run.out_dir}"
    assert path.is_file() and path.stat().st_mtime >= started, f"no fresh annotated image at {path}"
    with Image.open(path) as image:
        assert image.format == "JPEG" and image.width > 0
    return path


def _next_steps_said(stdout: str) -> None:
    for hint in ("carmesh detect", "make train", "make down"):
        assert hint in stdout, f"the demo's closing text does not mention `{hint}`:\n{stdout[-2000:]}"


def test_readme_names_the_two_setup_commands() -> None:
    commands = readme_commands()
    assert "make setup && make demo" in commands
    assert "make setup && make test" in commands
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.M), ".ci/run must run the README's test command"


@pytest.mark.timeout(600)
@pytest.mark.skipif(not YOLOX_NANO.is_file(), reason=f"{YOLOX_NANO} is not on this machine")
def test_make_demo_with_a_model_finds_cars(clean_run: Run) -> None:
    command = f"make setup && {readme_demo_with_model()}"
    started = time.time()
    result = clean_run.bash(command, 540)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"`{command}` exited {result.returncode}:\n{output[-4000:]}"
    cars = [score for name, score in _detections(result.stdout) if name == "car"]
    assert cars, f"no car among the printed detections:\n{result.stdout[-3000:]}"
    _annotated(clean_run, result.stdout, started)
    _next_steps_said(result.stdout)


@pytest.mark.timeout(900)
@pytest.mark.skipif(not APOLLO.is_dir(), reason=f"{APOLLO} is not on this machine")
def test_make_demo_trains_registers_promotes_and_detects(clean_run: Run) -> None:
    """The train-first path with a 60-second budget: the job runs, registers version 1, the demo promotes it
    (no champion yet, so the gate passes) and detects with it. So short a job finds few cars or none, so
    this checks that the detection ran and printed, not how many cars it found."""
    clean_run.env["DEMO_TRAIN"] = "60s"
    command = "make setup && make demo"
    assert command in readme_commands()
    started = time.time()
    result = clean_run.bash(command, 840)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"`{command}` exited {result.returncode}:\n{output[-4000:]}"
    assert (clean_run.run_dir / "demo-train.json").is_file(), "the job's result file was not written"
    assert re.search(r"car-detector: champion -> version 1\b", result.stdout), result.stdout[-3000:]
    assert re.search(r"\d+ detections?", result.stdout), f"no detection table printed:\n{result.stdout[-3000:]}"
    _annotated(clean_run, result.stdout, started)
    _next_steps_said(result.stdout)
