"""Kubeflow TFJob rendering: structure, name validation, the request manifest and the prepare step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainer.errors import BadRequest
from trainer.jobspec import JOB_FILE, JobSpec
from trainer.planning import SHORT_SCHEDULE, TrainRequest
from trainer.tfjob import (
    JOB_TEMPLATE_FILE,
    MLFLOW_PASSWORD_FILE,
    Resources,
    TFJobError,
    main,
    prepare,
    render_for_request,
    render_tfjob,
    to_yaml,
)


def _render(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "job_name": "train-car-1",
        "namespace": "carmesh",
        "image": "registry.local/carmesh-trainer:1.0",
        "workers": 3,
        "args": ["--job-dir", "/var/lib/carmesh/jobs/train-car-1"],
        "env": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"},
        "checkpoint_claim": "carmesh-trainer",
    }
    values.update(overrides)
    return render_tfjob(**values)


def test_tfjob_has_a_chief_and_workers_sharing_the_claim() -> None:
    job = _render(resources=Resources(cpu_request="1500m", memory_request="3Gi", cpu_limit="2", memory_limit="6Gi"))
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "TFJob")
    assert job["metadata"]["name"] == "train-car-1" and job["metadata"]["namespace"] == "carmesh"
    replicas = job["spec"]["tfReplicaSpecs"]
    assert set(replicas) == {"Chief", "Worker"}
    assert replicas["Chief"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    for spec in replicas.values():
        assert spec["restartPolicy"] == "OnFailure"
        pod = spec["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "tensorflow"
        assert container["command"] == ["python", "-m", "trainer_worker"]
        assert container["args"] == ["--job-dir", "/var/lib/carmesh/jobs/train-car-1"]
        assert container["env"] == [{"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"}]
        assert container["resources"] == {
            "requests": {"cpu": "1500m", "memory": "3Gi"},
            "limits": {"cpu": "2", "memory": "6Gi"},
        }
        (mount,) = container["volumeMounts"]
        (volume,) = pod["volumes"]
        assert mount["mountPath"] == "/var/lib/carmesh" and mount["name"] == volume["name"]
        assert volume["persistentVolumeClaim"] == {"claimName": "carmesh-trainer"}
        assert "initContainers" not in pod
    # The two replica types do not share mutable pieces (a later edit of one must not change the other).
    assert replicas["Chief"]["template"] is not replicas["Worker"]["template"]
    assert "TF_CONFIG" not in json.dumps(job)


def test_one_worker_renders_only_a_chief() -> None:
    job = _render(workers=1)
    assert list(job["spec"]["tfReplicaSpecs"]) == ["Chief"]
    assert job["spec"]["tfReplicaSpecs"]["Chief"]["replicas"] == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"job_name": "Train_Car"}, "job name 'Train_Car' must be a DNS-1123 label"),
        ({"job_name": "1train"}, "must start with a letter"),
        ({"job_name": "a" * 60}, r"1-54 lowercase letters"),  # 63 - len("-worker-1")
        ({"job_name": ""}, "DNS-1123 label"),
        ({"namespace": "Car Mesh"}, "namespace 'Car Mesh'"),
        ({"checkpoint_claim": "claim_1"}, "checkpoint claim 'claim_1' must be a DNS-1123 subdomain"),
        ({"workers": 0}, "workers must be >= 1"),
        ({"image": ""}, "image"),
        ({"env": {"TF_CONFIG": "{}"}}, "TF_CONFIG is set by the Training Operator"),
        ({"env": {"1 BAD": "x"}}, "environment variable name"),
        ({"resources": Resources(memory_limit="4 GB")}, r"resources.memory_limit '4 GB' is not a Kubernetes quantity"),
        ({"mount_dir": "relative/dir"}, "absolute path"),
    ],
)
def test_bad_inputs_fail_with_clear_value_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        _render(**overrides)
    # Also the trainer's INVALID_ARGUMENT error, so the gRPC layer reports it as the caller's mistake.
    assert isinstance(info.value, BadRequest) and isinstance(info.value, TFJobError)


def test_job_name_limit_leaves_room_for_the_longest_replica_service() -> None:
    name = "a" * (63 - len("-worker-10"))
    service = f"{name}-worker-10"
    assert len(service) == 63
    assert _render(job_name=name, workers=12)["metadata"]["name"] == name
    with pytest.raises(ValueError, match="DNS-1123 label"):
        _render(job_name=name + "a", workers=12)


def test_to_yaml_round_trips_every_document() -> None:
    job = _render()
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1"}}
    docs = list(yaml.safe_load_all(to_yaml(config, job)))
    assert docs == [config, job]


def _request(**overrides: Any) -> TrainRequest:
    values: dict[str, Any] = {
        "dataset": "apollo:2",
        "preset": "n",
        "epochs": 30,
        "workers": 2,
        "classes": ("car",),
        "ignore_classes": ("van", "truck"),
        "max_duration_s": 600,
    }
    values.update(overrides)
    return TrainRequest(**values)


def test_render_for_request_gives_a_config_map_and_a_tfjob_that_prepares_the_job_dir() -> None:
    text = render_for_request(
        _request(),
        namespace="ml",
        image="carmesh-trainer:2",
        checkpoint_claim="shared-rwx",
        mlflow_tracking_uri="http://mlflow.ml:5000",
        registry_addr="registry.ml:50061",
        feature_addr="features.ml:50071",
        model_name="car-detector",
    )
    config_map, job = yaml.safe_load_all(text)
    name = job["metadata"]["name"]
    assert name.startswith("train-car-detector-") and len(name) <= 54
    assert config_map["kind"] == "ConfigMap" and config_map["metadata"]["name"] == f"{name}-spec"
    template = JobSpec(**json.loads(config_map["data"][JOB_TEMPLATE_FILE]))
    assert (template.job_id, template.dataset) == (name, "apollo:2")
    assert (template.data_path, template.data_format) == ("", "coco")  # `prepare` fetches and pins it
    # The same schedule as a local job: annealed over the 600 s limit less start-up, at most 30 epochs, and
    # (a budget under SHORT_BUDGET_S) the short schedule.
    assert template.recipe == {"epochs": 30, "time_budget_s": 570, **SHORT_SCHEDULE}
    assert template.workers == 2 and template.threads_per_worker == 2
    assert template.ignore_classes == ["van", "truck"] and template.model["class_names"] == ["car"]
    assert template.mlflow_tracking_uri == "http://mlflow.ml:5000" and template.deadline_unix == 0.0
    replicas = job["spec"]["tfReplicaSpecs"]
    assert replicas["Worker"]["replicas"] == 1
    pod = replicas["Chief"]["template"]["spec"]
    job_dir = f"/var/lib/carmesh/jobs/{name}"
    assert pod["containers"][0]["args"] == ["--job-dir", job_dir]
    (init,) = pod["initContainers"]
    assert init["command"] == ["python", "-m", "trainer.tfjob"] and init["image"] == "carmesh-trainer:2"
    assert init["args"][:5] == ["prepare", "--template", f"/etc/carmesh/job/{JOB_TEMPLATE_FILE}", "--job-dir", job_dir]
    assert init["args"][-2:] == ["--feature-addr", "features.ml:50071"]
    assert {v["name"]: v for v in pod["volumes"]}["job-spec"]["configMap"] == {"name": f"{name}-spec"}
    # The same request renders the same name; another request another one.
    again = render_for_request(_request(), namespace="ml", image="carmesh-trainer:2", checkpoint_claim="shared-rwx")
    assert next(iter(yaml.safe_load_all(again)))["metadata"]["name"] == f"{name}-spec"
    other = render_for_request(_request(epochs=31), namespace="ml", image="i", checkpoint_claim="c")
    assert list(yaml.safe_load_all(other))[1]["metadata"]["name"] != name


def _template(tmp_path: Path, **overrides: Any) -> Path:
    spec = JobSpec(
        job_id="train-x",
        dataset=str(tmp_path / "data"),
        data_path=str(tmp_path / "data"),
        data_format="",
        model={"preset": "n", "class_names": [], "input_width": 320, "input_height": 192},
        max_duration_s=120.0,
    )
    values = {**spec.__dict__, **overrides}
    path = tmp_path / "template.json"
    path.write_text(json.dumps(values))
    return path


def test_prepare_writes_job_json_once_and_later_replicas_reuse_it(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    job_dir = tmp_path / "claim" / "jobs" / "train-x"
    first = prepare(_template(tmp_path), job_dir, tmp_path / "cache", feature_addr="")
    assert first.deadline_unix > 0 and JobSpec.read(job_dir) == first
    # A later replica (or a restarted pod) runs the spec already there, deadline included.
    template = _template(tmp_path, max_duration_s=999.0)
    assert (
        main(
            ["prepare", "--template", str(template), "--job-dir", str(job_dir), "--cache-dir", str(tmp_path / "cache")]
        )
        == 0
    )
    assert JobSpec.read(job_dir) == first
    assert sorted(p.name for p in job_dir.iterdir()) == [JOB_FILE]  # no partial files left behind


def test_prepare_needs_the_feature_service_for_a_snapshot(tmp_path: Path) -> None:
    template = _template(tmp_path, dataset="apollo:2", data_path="", data_format="coco")
    with pytest.raises(ValueError, match="needs --feature-addr"):
        prepare(template, tmp_path / "job", tmp_path / "cache", feature_addr="")
    assert not (tmp_path / "job" / JOB_FILE).exists()


def test_prepare_hands_the_trainers_mesh_files_to_the_workers(tmp_path: Path) -> None:
    """Pods reach feature_service and the registry over mutual TLS with the trainer's certificate."""
    (tmp_path / "data").mkdir()
    files = [str(tmp_path / name) for name in ("ca.crt", "tls.crt", "tls.key")]
    mesh = ["--mesh-ca-file", files[0], "--mesh-cert-file", files[1], "--mesh-key-file", files[2]]
    job_dir = tmp_path / "job"
    argv = ["prepare", "--template", str(_template(tmp_path)), "--job-dir", str(job_dir)]
    assert main([*argv, "--cache-dir", str(tmp_path / "cache"), *mesh]) == 0
    assert JobSpec.read(job_dir).mesh_files == files
    with pytest.raises(TFJobError, match="all three"):
        main([*argv, "--cache-dir", str(tmp_path / "cache"), *mesh[:2]])


def test_a_rendered_tfjob_mounts_mlflows_password_from_a_secret_and_names_only_its_path() -> None:
    """The trainer's RenderTrainingJob with tfjob_mlflow_secret: pods read the password from a mounted file."""
    text = render_for_request(
        _request(),
        namespace="ml",
        image="carmesh-trainer:2",
        checkpoint_claim="shared-rwx",
        mlflow_tracking_uri="https://mlflow.ml",
        mlflow_username="trainer-bot",
        mlflow_secret="mlflow-basic-auth",
        mlflow_password_key="pass",
    )
    config_map, job = yaml.safe_load_all(text)
    template = JobSpec(**json.loads(config_map["data"][JOB_TEMPLATE_FILE]))
    assert (template.mlflow_username, template.mlflow_password_file) == ("trainer-bot", MLFLOW_PASSWORD_FILE)
    for replica in job["spec"]["tfReplicaSpecs"].values():
        pod = replica["template"]["spec"]
        volume = {v["name"]: v for v in pod["volumes"]}["mlflow-password"]
        assert volume["secret"] == {
            "secretName": "mlflow-basic-auth",
            "defaultMode": 0o400,
            "items": [{"key": "pass", "path": "password"}],
        }
        assert pod["securityContext"] == {"fsGroup": 10001}  # the images' group may read the 0400 file
        for container in [*pod["containers"], *pod["initContainers"]]:
            mounts = [m for m in container["volumeMounts"] if m["name"] == "mlflow-password"]
            assert mounts == [{"name": "mlflow-password", "mountPath": "/etc/carmesh/secrets/mlflow", "readOnly": True}]
            assert not any("PASSWORD" in e["name"] for e in container["env"])
    # Without a Secret nothing is mounted and job.json names no credentials.
    plain_map, plain = yaml.safe_load_all(
        render_for_request(_request(), namespace="ml", image="i:1", checkpoint_claim="c", mlflow_username="bot")
    )
    assert "mlflow" not in json.dumps(plain["spec"]).replace("MLFLOW_TRACKING_URI", "").lower()
    assert JobSpec(**json.loads(plain_map["data"][JOB_TEMPLATE_FILE])).mlflow_password_file == ""
    with pytest.raises(TFJobError, match="MLflow Secret 'Bad_Name'"):
        render_for_request(
            _request(),
            namespace="ml",
            image="i:1",
            checkpoint_claim="c",
            mlflow_username="bot",
            mlflow_secret="Bad_Name",
        )
    with pytest.raises(TFJobError, match="username"):
        render_for_request(_request(), namespace="ml", image="i:1", checkpoint_claim="c", mlflow_secret="s")
