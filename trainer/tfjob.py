"""Kubeflow ``TFJob`` manifests that run a training job on a cluster with the same worker as here.

The Training Operator starts one Chief and ``workers - 1`` Workers, injects ``TF_CONFIG`` into
each (so it is never set here) and restarts failed pods; ``trainer_worker`` trains under
``MultiWorkerMirroredStrategy`` and resumes from the checkpoints in the job directory, which
lives on a PersistentVolumeClaim every replica mounts (ReadWriteMany when pods may land on
different nodes).

:func:`render_for_request` adds what a job needs to start there: a ConfigMap with the job spec
template, and an init container (``python -m trainer.tfjob prepare``) that turns it into the
job directory's ``job.json``, fetching a feature_service snapshot onto the claim first. The
first replica to finish that step fixes the spec (snapshot version, deadline); the others and
restarted pods reuse it, so all workers train on the same data.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kit.mesh_tls import MeshTls
from trainer.errors import BadRequest
from trainer.jobspec import JOB_FILE, JobSpec

if TYPE_CHECKING:
    from trainer.planning import TrainRequest

API_VERSION = "kubeflow.org/v1"
# The operator finds the TensorFlow container of each replica by this exact name.
CONTAINER_NAME = "tensorflow"
WORKER_COMMAND = ("python", "-m", "trainer_worker")
DEFAULT_MOUNT_DIR = "/var/lib/carmesh"
JOB_SPEC_DIR = "/etc/carmesh/job"
JOB_TEMPLATE_FILE = "job-template.json"
# MLflow's password in training pods: a Secret's key mounted as a file (as helm/carmesh mounts it), whose
# path goes into job.json; the password itself never enters the manifest, the ConfigMap or an argument.
MLFLOW_SECRET_DIR = "/etc/carmesh/secrets/mlflow"
MLFLOW_PASSWORD_FILE = f"{MLFLOW_SECRET_DIR}/password"
# The images' carmesh group (images/*.Dockerfile): secret files are root's, fsGroup lets the worker read them.
IMAGE_GID = 10001
_VOLUME = "carmesh-data"
_SPEC_VOLUME = "job-spec"
_MLFLOW_VOLUME = "mlflow-password"

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
# Kubernetes quantities: a decimal number with an optional binary/decimal suffix or exponent.
_QUANTITY = re.compile(r"^(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][-+]?\d+)?$")
_LABEL_MAX = 63


class TFJobError(BadRequest, ValueError):
    """A manifest that cannot be rendered (bad name, worker count or quantity); INVALID_ARGUMENT over gRPC."""


@dataclass(frozen=True)
class Resources:
    """Per-replica CPU and memory (Kubernetes quantities); requests equal to limits give Guaranteed QoS."""

    cpu_request: str = "2"
    memory_request: str = "4Gi"
    cpu_limit: str = "2"
    memory_limit: str = "4Gi"

    def as_dict(self) -> dict[str, dict[str, str]]:
        for field_name, value in asdict(self).items():
            if not _QUANTITY.match(value):
                raise TFJobError(
                    f"resources.{field_name} {value!r} is not a Kubernetes quantity (e.g. '2', '500m', '4Gi')"
                )
        return {
            "requests": {"cpu": self.cpu_request, "memory": self.memory_request},
            "limits": {"cpu": self.cpu_limit, "memory": self.memory_limit},
        }


def _check_label(what: str, value: str, max_len: int = _LABEL_MAX) -> None:
    if not value or len(value) > max_len or not _DNS1123_LABEL.match(value):
        raise TFJobError(
            f"{what} {value!r} must be a DNS-1123 label: 1-{max_len} lowercase letters, digits or '-', "
            "starting and ending with a letter or digit"
        )


def _check_job_name(job_name: str, workers: int) -> None:
    # The operator names each replica's Service "<job>-<type>-<index>", and Services need a DNS-1035
    # label (<= 63 characters, starting with a letter), so the name must leave room for the longest.
    longest_suffix = f"-worker-{workers - 2}" if workers > 1 else "-chief-0"
    _check_label("job name", job_name, _LABEL_MAX - len(longest_suffix))
    if not job_name[0].isalpha():
        raise TFJobError(f"job name {job_name!r} must start with a letter (its Services' names begin with it)")


def _check_subdomain(what: str, value: str) -> None:
    if not value or len(value) > 253 or not _DNS1123_SUBDOMAIN.match(value):
        raise TFJobError(
            f"{what} {value!r} must be a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', "
            "at most 253 characters"
        )


def _env_list(env: Mapping[str, str]) -> list[dict[str, str]]:
    out = []
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise TFJobError(f"environment variable name {name!r} is not valid (letters, digits, '_', '-', '.')")
        if name == "TF_CONFIG":
            raise TFJobError("TF_CONFIG is set by the Training Operator for each replica; do not pass it")
        out.append({"name": name, "value": str(value)})
    return out


def render_tfjob(
    job_name: str,
    namespace: str,
    image: str,
    workers: int,
    args: Sequence[str],
    env: Mapping[str, str],
    resources: Resources = Resources(),  # frozen: a shared default is safe
    checkpoint_claim: str = "carmesh-trainer",
    mount_dir: str = DEFAULT_MOUNT_DIR,
    job_config_map: str = "",
    init_args: Sequence[str] = (),
    image_pull_policy: str = "IfNotPresent",
    backoff_limit: int = 3,
    mlflow_secret: str = "",
    mlflow_password_key: str = "password",
) -> dict[str, Any]:
    """The TFJob object: Chief (1) + Worker (``workers - 1``) running ``python -m trainer_worker *args``,
    with the claim ``checkpoint_claim`` mounted at ``mount_dir`` in every replica.

    ``job_config_map`` mounts that ConfigMap read-only at ``JOB_SPEC_DIR``; ``init_args`` adds an init
    container running ``python -m trainer.tfjob *init_args`` with the same image, env and mounts.
    ``mlflow_secret`` mounts that Secret's ``mlflow_password_key`` read-only at ``MLFLOW_PASSWORD_FILE``.
    """
    if workers < 1:
        raise TFJobError(f"workers must be >= 1 (the chief counts as one), got {workers}")
    _check_job_name(job_name, workers)
    _check_label("namespace", namespace)
    _check_subdomain("checkpoint claim", checkpoint_claim)
    if job_config_map:
        _check_subdomain("job ConfigMap", job_config_map)
    if not image.strip() or any(c.isspace() for c in image):
        raise TFJobError(f"image {image!r} must be a non-empty container image reference without spaces")
    if not mount_dir.startswith("/"):
        raise TFJobError(f"mount_dir {mount_dir!r} must be an absolute path")
    if image_pull_policy not in ("Always", "IfNotPresent", "Never"):
        raise TFJobError(f"image_pull_policy {image_pull_policy!r} must be Always, IfNotPresent or Never")
    if backoff_limit < 0:
        raise TFJobError(f"backoff_limit must be >= 0, got {backoff_limit}")
    if mlflow_secret:
        _check_subdomain("MLflow Secret", mlflow_secret)
        if not _SECRET_KEY.match(mlflow_password_key):
            raise TFJobError(f"MLflow Secret key {mlflow_password_key!r} must be letters, digits, '-', '_' or '.'")

    labels = {
        "app.kubernetes.io/name": "carmesh-trainer",
        "app.kubernetes.io/part-of": "carmesh",
        "carmesh/job": job_name,
    }
    mounts: list[dict[str, Any]] = [{"name": _VOLUME, "mountPath": mount_dir}]
    volumes: list[dict[str, Any]] = [{"name": _VOLUME, "persistentVolumeClaim": {"claimName": checkpoint_claim}}]
    if job_config_map:
        mounts.append({"name": _SPEC_VOLUME, "mountPath": JOB_SPEC_DIR, "readOnly": True})
        volumes.append({"name": _SPEC_VOLUME, "configMap": {"name": job_config_map}})
    if mlflow_secret:
        mounts.append({"name": _MLFLOW_VOLUME, "mountPath": MLFLOW_SECRET_DIR, "readOnly": True})
        volumes.append(
            {
                "name": _MLFLOW_VOLUME,
                "secret": {
                    "secretName": mlflow_secret,
                    "defaultMode": 0o400,
                    "items": [{"key": mlflow_password_key, "path": "password"}],
                },
            }
        )
    env_list = _env_list(env)
    resource_dict = resources.as_dict()

    def container(name: str, module: str, container_args: Sequence[str]) -> dict[str, Any]:
        return {
            "name": name,
            "image": image,
            "imagePullPolicy": image_pull_policy,
            "command": ["python", "-m", module],
            "args": [str(a) for a in container_args],
            "env": [dict(e) for e in env_list],
            "resources": json.loads(json.dumps(resource_dict)),
            "volumeMounts": [dict(m) for m in mounts],
        }

    def replica(count: int) -> dict[str, Any]:
        pod: dict[str, Any] = {
            "containers": [container(CONTAINER_NAME, WORKER_COMMAND[2], args)],
            "volumes": [json.loads(json.dumps(v)) for v in volumes],
        }
        if init_args:
            pod["initContainers"] = [container("prepare", "trainer.tfjob", init_args)]
        if mlflow_secret:
            pod["securityContext"] = {"fsGroup": IMAGE_GID}
        return {
            "replicas": count,
            "restartPolicy": "OnFailure",
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
        }

    replica_specs = {"Chief": replica(1)}
    if workers > 1:
        replica_specs["Worker"] = replica(workers - 1)
    return {
        "apiVersion": API_VERSION,
        "kind": "TFJob",
        "metadata": {"name": job_name, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            # Replicas still running when the job ends are deleted; finished pods stay for their logs.
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": backoff_limit},
            "tfReplicaSpecs": replica_specs,
        },
    }


def to_yaml(*objects: Mapping[str, Any]) -> str:
    """One YAML document per object, in order (``kubectl apply -f`` takes the stream)."""
    return yaml.safe_dump_all([dict(o) for o in objects], sort_keys=False, default_flow_style=False)


def job_name_for(req: TrainRequest, model_name: str) -> str:
    """A stable name per request: ``train-<model>-<hash of the request>`` within the label limit."""
    digest = hashlib.sha256(json.dumps(asdict(req), sort_keys=True, default=list).encode()).hexdigest()[:8]
    stem = re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")[:30].strip("-") or "model"
    return f"train-{stem}-{digest}"


def _job_template(
    req: TrainRequest,
    job_name: str,
    model_name: str,
    cores: int,
    mlflow_tracking_uri: str,
    registry_addr: str,
    mlflow_username: str = "",
    mlflow_password_file: str = "",
) -> JobSpec:
    from trainer.planning import DEFAULT_EXPORT_PRECISION, DEFAULT_INPUT_HEIGHT, DEFAULT_INPUT_WIDTH, recipe_overrides
    from trainer.snapshots import looks_like_folder

    recipe = recipe_overrides(req)
    folder = looks_like_folder(req.dataset)
    return JobSpec(
        job_id=job_name,
        dataset=req.dataset,
        # A folder must be visible in the pods as given; a snapshot's folder is set by `prepare`.
        data_path=req.dataset if folder else "",
        data_format="" if folder else "coco",
        model={
            "preset": req.preset,
            "class_names": list(req.classes),
            "input_width": req.input_width or DEFAULT_INPUT_WIDTH,
            "input_height": req.input_height or DEFAULT_INPUT_HEIGHT,
        },
        ignore_classes=list(req.ignore_classes),
        recipe=recipe,
        init_checkpoint=req.init_checkpoint,
        max_duration_s=float(req.max_duration_s),
        deadline_unix=0.0,  # set by `prepare` when the job actually starts
        workers=req.workers,
        threads_per_worker=cores,
        model_name=model_name,
        mlflow_tracking_uri=mlflow_tracking_uri,
        registry_addr=registry_addr,
        export_precision=req.precision or DEFAULT_EXPORT_PRECISION,
        mlflow_username=mlflow_username,
        mlflow_password_file=mlflow_password_file,
    )


def _whole_cores(cpu: str) -> int:
    """TensorFlow threads per worker from a CPU quantity ("2", "1500m", "0.5"): at least one."""
    if not _QUANTITY.match(cpu):
        raise TFJobError(f"cpu {cpu!r} is not a Kubernetes quantity")
    value = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    return max(1, int(value))


def render_for_request(
    req: TrainRequest,
    *,
    namespace: str,
    image: str,
    checkpoint_claim: str,
    mlflow_tracking_uri: str = "",
    registry_addr: str = "",
    feature_addr: str = "",
    model_name: str = "car-detector",
    job_name: str = "",
    resources: Resources = Resources(),  # frozen: a shared default is safe
    mount_dir: str = DEFAULT_MOUNT_DIR,
    mlflow_username: str = "",
    mlflow_secret: str = "",
    mlflow_password_key: str = "password",
) -> str:
    """The YAML (ConfigMap + TFJob) that runs ``req`` on a cluster. Addresses must be reachable from the pods.
    With ``mlflow_secret`` the pods log in to MLflow as ``mlflow_username`` with that Secret's key."""
    job_name = job_name or job_name_for(req, model_name)
    if mlflow_secret and not mlflow_username:
        raise TFJobError("an MLflow Secret needs the MLflow username the pods log in as")
    template = _job_template(
        req,
        job_name,
        model_name,
        _whole_cores(resources.cpu_limit),
        mlflow_tracking_uri,
        registry_addr,
        mlflow_username=mlflow_username if mlflow_secret else "",
        mlflow_password_file=MLFLOW_PASSWORD_FILE if mlflow_secret else "",
    )
    config_map_name = f"{job_name}-spec"
    job_dir = f"{mount_dir.rstrip('/')}/jobs/{job_name}"
    init_args = [
        "prepare",
        "--template",
        f"{JOB_SPEC_DIR}/{JOB_TEMPLATE_FILE}",
        "--job-dir",
        job_dir,
        "--cache-dir",
        f"{mount_dir.rstrip('/')}/datasets",
    ]
    if feature_addr:
        init_args += ["--feature-addr", feature_addr]
    env = {"PYTHONUNBUFFERED": "1"}
    if mlflow_tracking_uri:
        env["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
    tfjob = render_tfjob(
        job_name=job_name,
        namespace=namespace,
        image=image,
        workers=req.workers,
        args=["--job-dir", job_dir],
        env=env,
        resources=resources,
        checkpoint_claim=checkpoint_claim,
        mount_dir=mount_dir,
        job_config_map=config_map_name,
        init_args=init_args,
        mlflow_secret=mlflow_secret,
        mlflow_password_key=mlflow_password_key,
    )
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": config_map_name, "namespace": namespace, "labels": tfjob["metadata"]["labels"]},
        "data": {JOB_TEMPLATE_FILE: json.dumps(asdict(template), indent=2)},
    }
    return to_yaml(config_map, tfjob)


def prepare(
    template: Path, job_dir: Path, cache_dir: Path, feature_addr: str, mesh_files: Sequence[str] = ()
) -> JobSpec:
    """Writes ``job_dir/job.json`` from the template unless a replica already did, fetching the snapshot
    it names onto the shared claim; returns the job spec every replica then runs. ``mesh_files`` (the
    trainer's mesh CA, certificate and key paths as the pods see them) make the fetch and the
    workers' registry call mutual TLS."""
    job_dir.mkdir(parents=True, exist_ok=True)
    target = job_dir / JOB_FILE
    if target.is_file():
        spec = JobSpec.read(job_dir)
    else:
        spec = JobSpec(**json.loads(template.read_text()))
        if mesh_files:
            spec = replace(spec, mesh_files=list(mesh_files))
        if spec.max_duration_s:
            spec = replace(spec, deadline_unix=time.time() + spec.max_duration_s)
        if not spec.data_path:  # a snapshot: pin its version by fetching it
            dataset, data_path = _fetch(spec.dataset, cache_dir, feature_addr, mesh_files)
            spec = replace(spec, dataset=dataset, data_path=data_path)
        partial = job_dir / f".{JOB_FILE}.{os.uname().nodename}.{os.getpid()}"
        partial.write_text(json.dumps(asdict(spec), indent=2))
        try:
            # link() refuses to replace: if another replica won the race, its spec is the one all run.
            os.link(partial, target)
        except FileExistsError:
            spec = JobSpec.read(job_dir)
        finally:
            partial.unlink()
    if spec.data_format == "coco" and not Path(spec.data_path).is_dir():
        # Written by another replica but the cached snapshot is gone: fetch that exact version again.
        _fetch(spec.dataset, cache_dir, feature_addr, mesh_files)
    return spec


def _fetch(dataset: str, cache_dir: Path, feature_addr: str, mesh_files: Sequence[str] = ()) -> tuple[str, str]:
    """(pinned "name:version", local folder) of a snapshot, fetched into the cache unless already there."""
    from trainer.snapshots import materialize, parse_ref

    if not feature_addr:
        raise TFJobError(f"data set {dataset!r} is a snapshot: prepare needs --feature-addr to fetch it")
    tls = MeshTls(*(Path(path).read_bytes() for path in mesh_files)) if mesh_files else None
    cached = asyncio.run(materialize(feature_addr, parse_ref(dataset), cache_dir, tls=tls))
    return f"{cached.ref.name}:{cached.ref.version}", str(cached.path)


_MESH_FILES = ("ca", "cert", "key")


def add_mesh_arguments(parser: argparse.ArgumentParser) -> None:
    """The trainer's mesh TLS files for pods (default: the trainer daemon's own variables, as the chart sets them)."""
    for part in _MESH_FILES:
        variable = f"CARMESH_TRAINER_MESH_{part.upper()}_FILE"
        parser.add_argument(
            f"--mesh-{part}-file",
            default=os.environ.get(variable, ""),
            help=f"the trainer's mesh {part} file (PEM; default ${variable}); all three or none",
        )


def mesh_files_of(args: argparse.Namespace) -> list[str]:
    files = [getattr(args, f"mesh_{part}_file") for part in _MESH_FILES]
    if any(files) and not all(files):
        raise TFJobError("give all three of --mesh-ca-file, --mesh-cert-file, --mesh-key-file, or none")
    return files if all(files) else []


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.tfjob", description="TFJob helper steps")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="write the job directory's job.json from the ConfigMap template")
    prep.add_argument("--template", type=Path, required=True)
    prep.add_argument("--job-dir", type=Path, required=True)
    prep.add_argument("--cache-dir", type=Path, required=True)
    prep.add_argument("--feature-addr", default="")
    add_mesh_arguments(prep)
    args = parser.parse_args(argv)
    spec = prepare(args.template, args.job_dir, args.cache_dir, args.feature_addr, mesh_files_of(args))
    with contextlib.suppress(BrokenPipeError):
        print(f"job {spec.job_id}: data {spec.dataset} at {spec.data_path}, {spec.workers} worker(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
