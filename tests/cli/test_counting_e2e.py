"""``carmesh cameras zones set|list`` and ``carmesh counts`` through the real gateway to the
tracker daemon, with the tracking scopes; the counts of a streamed camera equal the truth."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from tests.cli.support import carmesh
from tests.gateway.support import run_gateway
from tests.helpers import DaemonProcess, free_port
from tests.support import eventually_async
from tests.tracker.support import Run, expected_counts

pytestmark = [pytest.mark.integration]

COUNTER_KEY = "counter-key-0123456789abcdef"
VIEWER_KEY = "viewer-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdefgh"


@pytest.fixture(scope="module")
def mesh(
    kafka_bootstrap: str, postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Run]]:
    keys = tmp_path_factory.mktemp("tracking-keys") / "keys.txt"
    keys.write_text(
        f"{COUNTER_KEY} ops tracking.read,tracking.write\n{VIEWER_KEY} viewer tracking.read,events\n"
        f"{OTHER_KEY} cam detect\n"
    )
    run = Run(kafka_bootstrap, postgres_dsn)
    run.cameras = dict(list(run.cameras.items())[:1])
    with ExitStack() as stack:
        tracker = stack.enter_context(DaemonProcess("tracker", run.args))
        gateway = stack.enter_context(
            run_gateway(keys, f"127.0.0.1:{free_port()}", None, "--tracker-addr", tracker.address)
        )
        yield gateway.address, run


@pytest.fixture
async def pool(postgres_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    yield pool
    await pool.close()


def _cli(gateway: str, key: str | None, *args: str):
    return carmesh(*args, gateway=gateway, api_key=key)


async def test_zones_set_list_and_counts_through_the_gateway(mesh, pool) -> None:
    gateway, run = mesh
    camera = next(iter(run.cameras))
    layout = ["--size", "640x360", "--line", "gate:320,300,320,150", "--zone", "bay:500,240,640,240,640,300,500,300"]

    denied = _cli(gateway, VIEWER_KEY, "cameras", "zones", "set", camera, *layout)
    assert denied.returncode == 4 and "PERMISSION_DENIED" in denied.stderr, denied.stderr
    stored = _cli(gateway, COUNTER_KEY, "cameras", "zones", "set", camera, *layout, "--json")
    assert stored.returncode == 0, stored.stderr
    record = json.loads(stored.stdout)
    assert (record["version"], record["size"], record["lines"][0]["name"]) == (1, [640, 360], "gate")
    listed = _cli(gateway, VIEWER_KEY, "cameras", "zones", "list", camera)
    assert listed.returncode == 0 and f"{camera} v1 (640x360)" in listed.stdout and "zone bay:" in listed.stdout
    bad = _cli(gateway, COUNTER_KEY, "cameras", "zones", "set", camera, "--size", "640x360", "--line", "g:0,0,900,0")
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "lines[0].end" in bad.stderr, bad.stderr
    assert _cli(gateway, OTHER_KEY, "counts", camera).returncode == 4

    assert _cli(gateway, COUNTER_KEY, "events", "--camera", camera, "--follow").returncode == 4  # no events scope
    follower = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "carmesh_cli", "events", "--camera", camera, "--follow", "--json",
        env={**os.environ, "CARMESH_GATEWAY": gateway, "CARMESH_API_KEY": VIEWER_KEY, "CARMESH_PLAINTEXT": "1"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            assert b"following the events" in await follower.stderr.readline()  # type: ignore[union-attr]
        start = datetime.now(UTC)
        await run.produce()
        await eventually_async(lambda: _done(run, pool), what="every frame counted", timeout_s=60)
        expected = expected_counts(run.cameras[camera])
        followed = []
        async with asyncio.timeout(30):
            while len(followed) < sum(expected.values()):
                followed.append(json.loads(await follower.stdout.readline()))  # type: ignore[union-attr]
    finally:
        follower.terminate()
        await follower.wait()
    assert Counter((e["name"], e["direction"], e["class"]) for e in followed) == expected
    # The frames' capture times run up to 20 s past the wall clock at the start: the interval covers them.
    window = ["--since", "5m", "--until", (start + timedelta(minutes=5)).isoformat()]
    total = _cli(gateway, VIEWER_KEY, "counts", camera, *window, "--by", "total", "--json")
    assert total.returncode == 0, total.stderr
    rows = [json.loads(line) for line in total.stdout.splitlines()]
    assert {(r["name"], r["direction"], r["class"]): r["count"] for r in rows} == expected_counts(run.cameras[camera])
    table = _cli(gateway, VIEWER_KEY, "counts", camera, *window)
    assert table.returncode == 0 and "BUCKET (UTC)" in table.stdout and "gate in car" in table.stdout, table.stdout
    empty = _cli(gateway, VIEWER_KEY, "counts", f"nobody-{uuid.uuid4().hex[:6]}")
    assert empty.returncode == 0 and "no counts" in empty.stdout


async def _done(run: Run, pool) -> bool:
    return await run.done(pool) >= run.total


def test_usage_errors_before_any_call(tmp_path: Path) -> None:
    for args in (
        ["cameras", "zones", "set", "cam", "--size", "640by360"],
        ["counts", "cam", "--since", "yesterday"],
        ["counts", "cam", "--by", "week"],
    ):
        result = carmesh(*args, gateway="127.0.0.1:1", api_key=None)
        assert result.returncode == 2, (args, result.stderr)
