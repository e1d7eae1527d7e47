"""``python -m devstack up|down|status``: the local mesh on 127.0.0.1 (see ``make up``)."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path

from devstack import services
from devstack.procs import Process, StackError

INFRA = ("redis", "postgres", "tansu", "mlflow")
DAEMONS = ("registry_gateway", "ingestor", "feature_service", "trainer", "detector", "tracker", "gateway")


def config_from_env() -> services.StackConfig:
    offset = int(os.environ.get("CARMESH_STACK_PORT_OFFSET", "0"))
    return services.StackConfig(
        run_dir=Path(os.environ.get("CARMESH_STACK_RUN_DIR", ".run")).resolve(),
        ports=services.Ports().shifted(offset),
        mlflow_backend_uri=os.environ.get("CARMESH_STACK_MLFLOW_BACKEND_URI") or None,
        mlflow_auth=True,
        extra_data_roots=tuple(
            Path(root).resolve() for root in os.environ.get("CARMESH_STACK_DATA_ROOTS", "").split(os.pathsep) if root
        ),
    )


def processes(cfg: services.StackConfig, names: tuple[str, ...]) -> list[Process]:
    builders = {
        "redis": services.redis,
        "postgres": services.postgres,
        "tansu": services.tansu,
        "mlflow": services.mlflow,
        "registry_gateway": services.registry_gateway,
        "ingestor": services.ingestor,
        "feature_service": services.feature_service,
        "trainer": services.trainer,
        "detector": services.detector,
        "tracker": services.tracker,
        "gateway": services.gateway,
    }
    return [builders[name](cfg) for name in names]


def ensure_api_key(cfg: services.StackConfig) -> str:
    """A local admin key for the gateway, made once per run dir; ``make demo`` and the CLI read it."""
    key_path = cfg.run_dir / "api-key"
    if not key_path.exists():
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        key_path.write_text(f"cm_{secrets.token_urlsafe(24)}\n")
        key_path.chmod(0o600)
    key = key_path.read_text().strip()
    keys_file = cfg.run_dir / "api-keys"
    keys_file.write_text(f"# written by `make up`: KEY NAME SCOPES\n{key} local-admin *\n")
    keys_file.chmod(0o600)
    return key


def up(cfg: services.StackConfig, names: tuple[str, ...]) -> None:
    if "gateway" in names:
        ensure_api_key(cfg)
    if set(names) & set(DAEMONS):
        cfg.ensure_pki()
    started = 0
    for proc in processes(cfg, names):
        # Status for people goes to stderr (stdout stays free for what scripts capture), and only for
        # what this call starts: scripts call `up` again to be sure, and need not repeat the list.
        if proc.start():
            started += 1
            print(f"starting {proc.name:<17} log {proc.log_path}", file=sys.stderr, flush=True)
        try:
            proc.wait_ready()
        except StackError:
            proc.stop()
            raise
        if proc.name == "postgres":
            services.create_databases(cfg)
    if not started:
        return  # all of it was running: the summary was printed when it started
    print(
        f"up: gateway {services.HOST}:{cfg.ports.gateway}  mlflow {cfg.mlflow_uri}  "
        f"kafka {cfg.kafka_bootstrap}  redis {cfg.redis_url}  postgres {cfg.postgres_dsn}",
        file=sys.stderr,
    )


def down(cfg: services.StackConfig) -> None:
    # Reverse order of start: daemons first, so they drain while their dependencies still answer.
    for name in reversed(INFRA + DAEMONS):
        proc = Process(name, [], cfg.run_dir, ready=lambda: True)
        if proc.stop():
            print(f"stopped {name}", file=sys.stderr)


def status(cfg: services.StackConfig) -> int:
    missing = 0
    for name in INFRA + DAEMONS:
        pid = Process(name, [], cfg.run_dir, ready=lambda: True).pid()
        missing += pid is None
        print(f"{name:<17} {'pid ' + str(pid) if pid else 'stopped'}")
    return 1 if missing else 0


def wait_serving(cfg: services.StackConfig, address: str, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    tls = cfg.operator_tls()
    while time.monotonic() < deadline:
        if services.grpc_serving(address, tls):
            return 0
        time.sleep(0.5)
    print(f"error: {address} not SERVING after {timeout_s:.0f}s; see the logs in .run/logs/", file=sys.stderr)
    return 1


def wait_frames(cfg: services.StackConfig, camera: str, expected: int, timeout_s: float) -> int:
    """Waits until feature_service has stored ``expected`` frames of ``camera`` (scripts snapshot after it)."""
    import asyncio

    import asyncpg

    async def stored() -> int:
        conn = await asyncpg.connect(cfg.postgres_dsn_with_password())
        try:
            return int(await conn.fetchval("select count(*) from frames where camera_id = $1", camera))
        finally:
            await conn.close()

    deadline = time.monotonic() + timeout_s
    count = 0
    while time.monotonic() < deadline:
        count = asyncio.run(stored())
        if count >= expected:
            return 0
        time.sleep(0.5)
    print(f"error: {count} of {expected} frames of {camera} stored after {timeout_s:.0f}s", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="start services and daemons, wait for health")
    up_parser.add_argument("--only", default="", help="comma-separated subset, e.g. redis,postgres")
    up_parser.add_argument("--infra", action="store_true", help="only Redis, PostgreSQL, Tansu, MLflow")
    sub.add_parser("down", help="stop everything started by `up`")
    sub.add_parser("status", help="what runs")
    wait_parser = sub.add_parser("wait-serving", help="wait until a gRPC address reports SERVING")
    wait_parser.add_argument("address")
    wait_parser.add_argument("timeout_s", type=float)
    frames_parser = sub.add_parser("wait-frames", help="wait until feature_service stored N frames of a camera")
    frames_parser.add_argument("camera")
    frames_parser.add_argument("expected", type=int)
    frames_parser.add_argument("timeout_s", type=float)
    args = parser.parse_args(argv)
    cfg = config_from_env()
    try:
        if args.command == "up":
            names = tuple(n for n in args.only.split(",") if n) or (INFRA if args.infra else INFRA + DAEMONS)
            unknown = set(names) - set(INFRA + DAEMONS)
            if unknown:
                parser.error(f"unknown service(s) {sorted(unknown)}; known: {', '.join(INFRA + DAEMONS)}")
            up(cfg, names)
        elif args.command == "wait-frames":
            return wait_frames(cfg, args.camera, args.expected, args.timeout_s)
        elif args.command == "wait-serving":
            return wait_serving(cfg, args.address, args.timeout_s)
        elif args.command == "down":
            down(cfg)
        else:
            return status(cfg)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
