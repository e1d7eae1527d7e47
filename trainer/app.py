"""Wires the trainer: job manager, planner, evaluator, TFJob rendering, gRPC server."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from carmesh.v1 import training_pb2_grpc
from kit import mesh_tls, mlflow_auth
from kit.daemon import Context, Daemon, DaemonSpec
from kit.mesh_tls import CallerPolicy
from kit.server import Server
from trainer.config import Settings
from trainer.evaluate import Evaluator
from trainer.jobs import JobLimits, JobManager
from trainer.metrics import TrainerMetrics
from trainer.planning import Planner, TrainRequest
from trainer.server import SERVICE_NAME, TrainingServicer
from trainer.snapshots import looks_like_folder, materialize, parse_ref

# Only the gateway calls the trainer: clients reach it through the gateway's keys and scopes.
CALLERS = CallerPolicy(default=frozenset({mesh_tls.GATEWAY}))

log = logging.getLogger(__name__)


def mesh_files(cfg: Settings) -> list[str]:
    """The trainer's mesh TLS files, absolute, for its worker processes (empty under --mesh-plaintext)."""
    files = (cfg.mesh_ca_file, cfg.mesh_cert_file, cfg.mesh_key_file)
    return [] if cfg.mesh_plaintext else [str(path.resolve()) for path in files if path is not None]


def mlflow_password_path(cfg: Settings) -> str:
    """The MLflow password file, absolute, for the workers' job.json ("" without one)."""
    return str(cfg.mlflow_password_file.resolve()) if cfg.mlflow_password_file is not None else ""


async def build(cfg: Settings, ctx: Context) -> TrainerDaemon:
    # MLflow's client reads basic-auth credentials from the environment only: this process's (evaluation
    # tags) gets them here; an unreadable or empty password file stops the start (exit 2, naming the file).
    # Workers read the file themselves from job.json's path, as training pods on a cluster do.
    credentials = await asyncio.to_thread(
        mlflow_auth.credentials_env, cfg.mlflow_username, cfg.mlflow_password_file, cfg.mlflow_username_file
    )
    mlflow_auth.apply(credentials)
    user = mlflow_auth.user_of(credentials)
    work = cfg.work_dir.expanduser().resolve()
    jobs = JobManager(
        work / "jobs",
        JobLimits(
            max_running_jobs=cfg.max_running_jobs,
            max_restarts=cfg.max_restarts,
            stop_grace_s=cfg.stop_grace_s,
            cpu_threads=cfg.cpu_threads,
        ),
    )
    # Running workers stop after their current step and resume when the daemon starts again.
    ctx.on_close(jobs.close)
    jobs.load()
    metrics = TrainerMetrics(ctx.metrics, jobs.all)
    planner = Planner(
        feature_addr=cfg.feature_addr,
        cache_dir=work / "datasets",
        allowed_roots=tuple(cfg.allowed_roots),
        max_workers=cfg.max_workers,
        cpu_threads=cfg.cpu_threads,
        defaults={
            "model_name": cfg.model_name,
            "mlflow_tracking_uri": cfg.mlflow_tracking_uri,
            "experiment": cfg.experiment,
            "registry_addr": cfg.registry_addr,
            "challenger_alias": cfg.challenger_alias,
            "mesh_files": mesh_files(cfg),
            "mlflow_username": user,
            "mlflow_password_file": mlflow_password_path(cfg),
        },
        mesh_tls=ctx.mesh_tls,
    )

    async def resolve_data(dataset: str) -> tuple[str, Path, str]:
        """(resolved name, local folder, format) of a snapshot or folder, for evaluation."""
        if looks_like_folder(dataset):
            folder = planner.folder(dataset)
            return str(folder), folder, ""
        cached = await materialize(cfg.feature_addr, parse_ref(dataset), planner.cache_dir, tls=ctx.mesh_tls)
        return f"{cached.ref.name}:{cached.ref.version}", cached.path, "coco"

    def render(namespace: str, req: TrainRequest, image: str, claim: str, job_name: str) -> str:
        from trainer.tfjob import render_for_request

        return render_for_request(
            req,
            namespace=namespace or cfg.tfjob_namespace,
            image=image or cfg.tfjob_image,
            checkpoint_claim=claim or cfg.tfjob_checkpoint_claim,
            mlflow_tracking_uri=cfg.mlflow_tracking_uri,
            registry_addr=cfg.registry_addr,
            feature_addr=cfg.feature_addr,
            model_name=req.model_name or cfg.model_name,
            mlflow_username=user,
            mlflow_secret=cfg.tfjob_mlflow_secret,
            mlflow_password_key=cfg.tfjob_mlflow_password_key,
        )

    evaluator = Evaluator(cfg.registry_addr, cfg.mlflow_tracking_uri, work / "models", resolve_data, ctx.mesh_tls, user)
    server = ctx.grpc_server([SERVICE_NAME], callers=CALLERS)
    training_pb2_grpc.add_TrainingServiceServicer_to_server(
        TrainingServicer(jobs, planner, render, evaluator), server.server
    )
    log.info("work dir %s, MLflow %s (%s)", work, cfg.mlflow_tracking_uri, f"user {user}" if user else "no basic auth")
    return TrainerDaemon(server, jobs, metrics)


@dataclass
class TrainerDaemon(Daemon):
    server: Server
    jobs: JobManager
    metrics: TrainerMetrics

    async def start(self) -> None:
        await self.server.set_serving(True)
        self.metrics.jobs_resumed.inc(len(self.jobs.resume()))


DAEMON = DaemonSpec("trainer", Settings, "CARMESH_TRAINER_", build)
