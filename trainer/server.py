"""TrainingService: proto <-> domain translation only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format

from carmesh.v1 import common_pb2, training_pb2, training_pb2_grpc
from kit.names import ALIAS, validate_name
from kit.pagination import page_request, paginate
from trainer.errors import BadRequest
from trainer.evaluate import EvaluateRequest, EvaluateResult
from trainer.jobs import FetchProgress, JobManager, JobRecord
from trainer.planning import Planner, TrainRequest
from trainer.snapshots import looks_like_folder

SERVICE_NAME = training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name


def check_dataset_name(dataset: str, field: str) -> None:
    """A snapshot reference ("name" or "name:version") names a snapshot of the kit's name syntax."""
    if dataset and not looks_like_folder(dataset):
        validate_name("snapshot name", dataset.partition(":")[0], field)


def train_request(request: training_pb2.StartTrainingRequest) -> TrainRequest:
    c = request.config
    check_dataset_name(request.dataset.strip(), "dataset")
    if request.model_name.strip():
        validate_name("model name", request.model_name.strip(), "model_name")
    return TrainRequest(
        dataset=request.dataset.strip(),
        preset=c.preset or "n",
        input_width=c.input_width,
        input_height=c.input_height,
        epochs=c.epochs,
        batch_size=c.batch_size,
        learning_rate=c.learning_rate,
        classes=tuple(n.strip() for n in c.classes),
        ignore_classes=tuple(n.strip() for n in c.ignore_classes if n.strip()),
        init_checkpoint=c.init_checkpoint,
        crop_width=c.crop_width,
        crop_height=c.crop_height,
        max_duration_s=c.max_duration_s,
        seed=c.seed,
        workers=request.workers or 1,
        model_name=request.model_name.strip(),
        precision=precision_name(c.precision),
    )


def precision_name(value: int) -> str:
    """``ExportPrecision`` -> "float32" / "int8" ("" when unspecified: the trainer's default)."""
    if value == training_pb2.EXPORT_PRECISION_UNSPECIFIED:
        return ""
    if value == training_pb2.EXPORT_PRECISION_FLOAT32:
        return "float32"
    if value == training_pb2.EXPORT_PRECISION_INT8:
        return "int8"
    raise BadRequest(
        f"unknown precision {value}; use EXPORT_PRECISION_FLOAT32 or EXPORT_PRECISION_INT8", field="config.precision"
    )


def job_message(job: JobRecord) -> training_pb2.TrainingJob:
    msg = training_pb2.TrainingJob(
        job_id=job.job_id,
        state=training_pb2.TrainingState.Name(int(job.state)),
        epoch=job.epoch,
        step=job.step,
        total_steps=job.total_steps,
        mlflow_run_id=job.mlflow_run_id,
        error=job.error,
        dataset=job.dataset,
        phase=job.phase.value,
        steps_per_s=job.steps_per_s,
        progress=job.progress,
        fetched_frames=job.fetched_frames,
        total_frames=job.total_frames,
    )
    json_format.ParseDict(job.request, msg.request, ignore_unknown_fields=True)
    for entry in job.history:
        msg.history.add(epoch=int(entry["epoch"]), metrics={k: float(v) for k, v in entry["metrics"].items()})
    msg.final_metrics.update(job.final_metrics)
    if job.registered_version:
        msg.registered.CopyFrom(
            common_pb2.ModelRef(name=job.registered_name, version=job.registered_version, alias=job.registered_alias)
        )
    msg.started_at.FromSeconds(int(job.started_at))
    if job.finished_at:
        msg.finished_at.FromSeconds(int(job.finished_at))
    return msg


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    def __init__(
        self,
        jobs: JobManager,
        planner: Planner,
        render: Callable[[str, TrainRequest, str, str, str], str],
        evaluate: Callable[[EvaluateRequest], Awaitable[EvaluateResult]],
    ) -> None:
        self._jobs = jobs
        self._planner = planner
        self._render = render
        self._evaluate = evaluate

    async def StartTraining(
        self, request: training_pb2.StartTrainingRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.StartTrainingResponse:
        req = train_request(request)
        self._planner.validate(req)
        await self._planner.check_snapshot(req)

        async def prepare(job: JobRecord, on_fetch: FetchProgress) -> Any:
            return await self._planner.prepare(job.job_id, req, on_fetch)

        as_json = json_format.MessageToDict(request, preserving_proto_field_name=False)
        job = self._jobs.start(as_json, prepare)
        return training_pb2.StartTrainingResponse(job=job_message(job))

    async def GetTrainingJob(
        self, request: training_pb2.GetTrainingJobRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.GetTrainingJobResponse:
        return training_pb2.GetTrainingJobResponse(job=job_message(self._jobs.get(_job_id(request.job_id))))

    async def WatchTrainingJob(
        self, request: training_pb2.WatchTrainingJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[training_pb2.WatchTrainingJobResponse]:
        async for job in self._jobs.watch(_job_id(request.job_id)):
            yield training_pb2.WatchTrainingJobResponse(job=job_message(job))

    async def CancelTrainingJob(
        self, request: training_pb2.CancelTrainingJobRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.CancelTrainingJobResponse:
        job = await self._jobs.cancel(_job_id(request.job_id))
        return training_pb2.CancelTrainingJobResponse(job=job_message(job))

    async def ListTrainingJobs(
        self, request: training_pb2.ListTrainingJobsRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.ListTrainingJobsResponse:
        page = page_request("ListTrainingJobs", request.page_size, request.page_token)
        # Newest first, as JobStore.all() sorts; the job id breaks ties between equal start times.
        jobs, token = paginate(self._jobs.all(), lambda j: (-_start_ns(j.started_at), j.job_id), page)
        return training_pb2.ListTrainingJobsResponse(jobs=[job_message(j) for j in jobs], next_page_token=token)

    async def RenderTrainingJob(
        self, request: training_pb2.RenderTrainingJobRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.RenderTrainingJobResponse:
        req = train_request(request.request)
        self._planner.validate_shape(req)
        manifest = self._render(request.namespace, req, request.image, request.checkpoint_claim, "")
        return training_pb2.RenderTrainingJobResponse(manifest_yaml=manifest)

    async def EvaluateModel(
        self, request: training_pb2.EvaluateModelRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.EvaluateModelResponse:
        m = request.model
        if not m.name or bool(m.version) == bool(m.alias):
            raise BadRequest("model needs a name and exactly one of version and alias")
        if not request.dataset.strip():
            raise BadRequest("dataset is required: a snapshot ('apollo', 'apollo:2') or a folder on the trainer")
        validate_name("model name", m.name, "model.name")
        if m.alias:
            validate_name(ALIAS, m.alias, "model.alias")
        check_dataset_name(request.dataset.strip(), "dataset")
        result = await self._evaluate(
            EvaluateRequest(
                model_name=m.name,
                version=m.version,
                alias=m.alias,
                dataset=request.dataset.strip(),
                classes=tuple(c.strip() for c in request.classes if c.strip()),
                ignore_classes=tuple(c.strip() for c in request.ignore_classes if c.strip()),
            )
        )
        return training_pb2.EvaluateModelResponse(
            model=common_pb2.ModelRef(name=result.model_name, version=result.version),
            dataset=result.dataset,
            classes=list(result.classes),
            map50=result.map50,
            map50_95=result.map50_95,
            ap50=result.ap50,
            images=result.images,
        )


def _job_id(job_id: str) -> str:
    if not job_id.strip():
        raise BadRequest("job_id is required")
    return job_id.strip()


def _start_ns(started_at_s: float) -> int:
    # Integer nanoseconds: page tokens carry sort keys through JSON, where ints are exact.
    return round(started_at_s * 1e9)
