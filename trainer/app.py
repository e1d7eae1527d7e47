"""Wires the trainer: job manager, planner, evaluator, TFJob rendering, gRPC server."""

from __future__ import annotations

import logging
from pathlib import Path

from carmesh.v1 import training_pb2_grpc
from kit.lifecycle import Lifecycle
from kit.metrics import Metrics, MetricsHttpServer
from kit.server import Server
from trainer.config import Settings
from trainer.evaluate import Evaluator
from trainer.jobs import JobLimits, JobManager
from trainer.planning import Planner, TrainRequest
from trainer.server import SERVICE_NAME, TrainingServicer
from trainer.snapshots import looks_like_folder, materialize, parse_ref

log = logging.getLogger(__name__)


class TrainerApp:
    def __init__(self, cfg: Settings, metrics: Metrics) -> None:
        self.cfg = cfg
        work = cfg.work_dir.expanduser().resolve()
        self.jobs = JobManager(
            work / "jobs",
            JobLimits(
                max_running_jobs=cfg.max_running_jobs,
                max_restarts=cfg.max_restarts,
                stop_grace_s=cfg.stop_grace_s,
                cpu_threads=cfg.cpu_threads,
            ),
        )
        self.planner = Planner(
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
            },
        )
        self.evaluator = Evaluator(cfg.registry_addr, cfg.mlflow_tracking_uri, work / "models", self._resolve_data)
        self.server = Server(
            host=cfg.host,
            port=cfg.grpc_port,
            service_names=[SERVICE_NAME],
            metrics=metrics,
            max_message_bytes=cfg.max_message_bytes,
        )
        training_pb2_grpc.add_TrainingServiceServicer_to_server(
            TrainingServicer(self.jobs, self.planner, self._render, self.evaluator), self.server.server
        )

    async def _resolve_data(self, dataset: str) -> tuple[str, Path, str]:
        """(resolved name, local folder, format) of a snapshot or folder, for evaluation."""
        if looks_like_folder(dataset):
            folder = self.planner.folder(dataset)
            return str(folder), folder, ""
        cached = await materialize(self.cfg.feature_addr, parse_ref(dataset), self.planner.cache_dir)
        return f"{cached.ref.name}:{cached.ref.version}", cached.path, "coco"

    def _render(self, namespace: str, req: TrainRequest, image: str, claim: str, job_name: str) -> str:
        from trainer.tfjob import render_for_request

        return render_for_request(
            req,
            namespace=namespace or self.cfg.tfjob_namespace,
            image=image or self.cfg.tfjob_image,
            checkpoint_claim=claim or self.cfg.tfjob_checkpoint_claim,
            mlflow_tracking_uri=self.cfg.mlflow_tracking_uri,
            registry_addr=self.cfg.registry_addr,
            feature_addr=self.cfg.feature_addr,
            model_name=req.model_name or self.cfg.model_name,
        )

    async def start(self) -> None:
        self.jobs.load()
        await self.server.start()
        await self.server.set_serving(True)
        self.jobs.resume()
        log.info("trainer on %s, work dir %s", self.server.address, self.cfg.work_dir)

    async def close(self) -> None:
        await self.jobs.close()


async def serve(cfg: Settings) -> None:
    lifecycle = Lifecycle(cfg.shutdown_grace_s)
    metrics = Metrics("trainer")
    if cfg.metrics_port:
        http = MetricsHttpServer(metrics, cfg.host, cfg.metrics_port)
        lifecycle.on_close(http.close)
    app = TrainerApp(cfg, metrics)
    lifecycle.on_close(app.close)
    await app.start()
    await lifecycle.run(app.server)
