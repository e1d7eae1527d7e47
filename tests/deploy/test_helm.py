"""`make helm-check`: helm/carmesh linted strictly, rendered with every values file in helm/carmesh/ci/
(manifests kept under .run/helm/), validated offline against Kubernetes and the CRDs' own schemas,
held to our rules, and every container's command run through the daemon's own check. A broken copy
of the chart fails each part."""

from __future__ import annotations

import re
import shutil
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from tests.deploy import helmcheck as h

VALUES = {path.stem: path for path in h.values_files()}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name, path in VALUES.items():
        out[name] = h.render(h.CHART, h.load_values(path))
        h.write_rendered(name, out[name])
    return out


def test_the_values_files_cover_each_way_to_deploy() -> None:
    assert set(VALUES) >= {"default", "single-daemon", "production", "gpu", "kserve", "tfjob", "indexed-job"}


@pytest.mark.parametrize("name", sorted(VALUES))
def test_lint_strict(name: str) -> None:
    assert h.lint(h.CHART, h.load_values(VALUES[name])) == []


@pytest.mark.parametrize("name", sorted(VALUES))
def test_every_object_validates_and_follows_our_rules(name: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered[name]
    assert (h.RENDERED / name / "manifests.yaml").is_file()
    assert h.validate(objects) == []
    assert h.rules(objects) == []


@pytest.fixture(scope="module")
def checked(
    rendered: dict[str, list[dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[str]]:
    # Mesh TLS settings are checked by the next test once the daemons have them.
    return h.check_configs(rendered, tmp_path_factory.mktemp("mounts"), keep_tls=h.mesh_tls_in_kit())


@pytest.mark.parametrize("name", sorted(VALUES))
def test_every_container_passes_its_own_check(name: str, checked: dict[str, list[str]]) -> None:
    assert checked[name] == []


@pytest.mark.skipif(not h.mesh_tls_in_kit(), reason="the daemons have no mesh TLS settings on this branch yet")
def test_the_charts_tls_settings_are_the_daemons(rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    problems = h.check_configs(rendered, tmp_path, keep_tls=True)
    assert problems == {name: [] for name in rendered}


def test_what_each_values_file_deploys(rendered: dict[str, list[dict[str, Any]]]) -> None:
    def kinds(name: str) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for obj in rendered[name]:
            out.setdefault(obj["kind"], set()).add(obj["metadata"]["name"])
        return out

    default = kinds("default")
    assert len(default["Deployment"]) == 7 and len(default["NetworkPolicy"]) == 7
    assert "HorizontalPodAutoscaler" not in default and "TFJob" not in default
    assert kinds("single-daemon")["Deployment"] == {"carmesh-detector"}
    production = kinds("production")
    assert production["HorizontalPodAutoscaler"] == {"carmesh-gateway", "carmesh-detector"}
    assert len(production["PodDisruptionBudget"]) == 4 and "Certificate" in production
    assert kinds("tfjob")["TFJob"] == {"train-apollo"}
    assert kinds("indexed-job")["Job"] == {"train-apollo"} and "train-apollo" in kinds("indexed-job")["Service"]
    assert kinds("kserve")["InferenceService"] == {"car-detector"}
    gpu = [o for o in rendered["gpu"] if o["kind"] == "Deployment" and o["metadata"]["name"] == "carmesh-detector"]
    container = gpu[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].endswith("/detector:0.2.0-gpu")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_an_indexed_jobs_pods_find_each_other(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """TF_CONFIG names <job>-<index>.<service>: the pods' hostnames under the headless Service."""
    job = next(o for o in rendered["indexed-job"] if o["kind"] == "Job")
    service = next(
        o for o in rendered["indexed-job"] if o["kind"] == "Service" and o["spec"].get("clusterIP") == "None"
    )
    pod = job["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert pod["subdomain"] == service["metadata"]["name"] == args[args.index("--service") + 1]
    assert args[args.index("--job-name") + 1] == job["metadata"]["name"]
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2


def test_mlflows_credentials_are_files_in_exactly_the_pods_that_talk_to_mlflow(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """external.mlflow.credentialsSecret: the registry gateway, the trainer and the training pods mount
    the Secret and name its files; no other pod does, and without it no pod does."""

    def holders(name: str) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for pod in h.pods(rendered[name]):
            volumes = [v for v in pod.spec.get("volumes", []) if v["name"] == "mlflow-credentials"]
            if volumes:
                out[pod.owner] = {i["key"] for i in volumes[0]["secret"]["items"]}
        return out

    assert holders("production") == {
        "Deployment/carmesh-registry-gateway": {"username", "password"},
        "Deployment/carmesh-trainer": {"username", "password"},
    }
    assert holders("tfjob") == {
        "Deployment/carmesh-registry-gateway": {"user", "pass"},
        "Deployment/carmesh-trainer": {"user", "pass"},
        "TFJob/train-apollo": {"user", "pass"},
    }
    assert "Job/train-apollo" in holders("indexed-job") and holders("default") == {}
    trainer = next(o for o in rendered["production"] if o["metadata"]["name"] == "carmesh-trainer")
    env = {e["name"]: e["value"] for e in trainer["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CARMESH_TRAINER_MLFLOW_USERNAME_FILE"] == f"{h.MLFLOW_SECRET_DIR}/username"
    assert env["CARMESH_TRAINER_MLFLOW_PASSWORD_FILE"] == f"{h.MLFLOW_SECRET_DIR}/password"
    assert env["CARMESH_TRAINER_TFJOB_MLFLOW_SECRET"] == "carmesh-mlflow"
    job = next(o for o in rendered["indexed-job"] if o["kind"] == "Job")
    args = job["spec"]["template"]["spec"]["initContainers"][0]["args"]
    assert args[args.index("--mlflow-password-file") + 1] == f"{h.MLFLOW_SECRET_DIR}/password"


def test_upgrading_one_daemon_changes_only_that_daemon() -> None:
    def objects(values: dict[str, Any]) -> dict[tuple[str, str], Any]:
        # Secrets hold freshly generated certificates on each offline render (an upgrade looks them up).
        return {(o["kind"], o["metadata"]["name"]): o for o in h.render(h.CHART, values) if o["kind"] != "Secret"}

    before = objects({})
    after = objects({"detector": {"image": {"tag": "0.2.1"}}})
    changed = {key for key in before if before[key] != after[key]}
    assert changed == {("Deployment", "carmesh-detector")}
    image = after[("Deployment", "carmesh-detector")]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "ghcr.io/carmesh/detector:0.2.1"


def test_latest_is_refused() -> None:
    with pytest.raises(helm_python.HelmError, match="detector/image/tag"):  # values.schema.json
        h.render(h.CHART, {"detector": {"image": {"tag": "latest"}}})
    assert h.lint(h.CHART, {"image": {"tag": "latest"}}) != []


def test_tfjobs_the_cli_renders_reach_what_training_pods_reach() -> None:
    """`carmesh train --render-tfjob` pods are admitted where the chart's training pods are."""
    from trainer.planning import TrainRequest
    from trainer.tfjob import render_for_request

    docs = list(
        yaml.safe_load_all(
            render_for_request(
                TrainRequest(dataset="apollo", workers=2),
                namespace=h.NAMESPACE,
                image="r/carmesh-trainer:0.2.0",
                checkpoint_claim="c",
            )
        )
    )
    tfjob = next(d for d in docs if d["kind"] == "TFJob")
    labels = tfjob["spec"]["tfReplicaSpecs"]["Chief"]["template"]["metadata"]["labels"]
    assert h.CLI_TFJOB_LABELS.items() <= labels.items()


def test_the_chart_carries_the_projects_version() -> None:
    version = tomllib.loads((h.CHART.parents[1] / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((h.CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == version


# --- a broken chart fails the check --------------------------------------------------------------


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}: update the breakage"
    path.write_text(text.replace(old, new, 1))


def _misspelt_setting(chart: Path) -> None:
    _edit(chart / "templates" / "_helpers.tpl", "model_cache_dir: /var/cache", "model_cache_directory: /var/cache")


def _unknown_flag(chart: Path) -> None:
    _edit(
        chart / "templates" / "deployments.yaml",
        "command: [python, -m, {{ $d.module }}]",
        "command: [python, -m, {{ $d.module }}]\n          args: [--max-batch, '4']",
    )


def _no_readiness_probe(chart: Path) -> None:
    _edit(chart / "templates" / "_helpers.tpl", "readinessProbe:", "startupProbe:")


def _caller_too_many(chart: Path) -> None:
    _edit(
        chart / "templates" / "_helpers.tpl",
        "detector: {module: detector, component: detector, prefix: CARMESH_DETECTOR_, callers: [gateway]}",
        "detector: {module: detector, component: detector, prefix: CARMESH_DETECTOR_, callers: [gateway, ingestor]}",
    )


def _writable_root(chart: Path) -> None:
    _edit(chart / "values.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false")


def _service_selects_nothing(chart: Path) -> None:
    _edit(
        chart / "templates" / "services.yaml",
        "selector:\n    {{- include",
        "selector:\n    tier: none\n    {{- include",
    )


def _bad_field(chart: Path) -> None:
    _edit(chart / "templates" / "autoscaling.yaml", "minReplicas:", "minimumReplicas:")


def _bad_tfjob_field(chart: Path) -> None:
    _edit(chart / "templates" / "training.yaml", "cleanPodPolicy: Running", "cleanPodsPolicy: Running")


def _mlflow_secret_in_the_detector(chart: Path) -> None:
    for _ in ("volumeMounts", "volumes"):
        _edit(
            chart / "templates" / "deployments.yaml",
            '(list "registryGateway" "trainer")',
            '(list "registryGateway" "trainer" "detector")',
        )


def _training_pods_without_the_mlflow_password(chart: Path) -> None:
    _edit(chart / "templates" / "_training.tpl", '{{- include "carmesh.mlflowMount" .root | nindent 2 }}', "")
    _edit(chart / "templates" / "_training.tpl", '{{- include "carmesh.mlflowVolume" .root | trim | nindent 2 }}', "")


def _mlflow_password_readable_by_all(chart: Path) -> None:
    _edit(
        chart / "templates" / "_helpers.tpl",
        "    defaultMode: 0400\n    items: [{key: {{ .usernameKey",
        "    defaultMode: 0644\n    items: [{key: {{ .usernameKey",
    )


Breakage = Callable[[Path], None]
BREAKAGES: dict[str, tuple[Breakage, str, str]] = {
    # name: (edit, values file, the check that must fail)
    "misspelt setting": (_misspelt_setting, "default", "check"),
    "unknown flag": (_unknown_flag, "single-daemon", "check"),
    "no readiness probe": (_no_readiness_probe, "default", "rules"),
    "a caller the design does not give": (_caller_too_many, "default", "rules"),
    "writable root filesystem": (_writable_root, "default", "rules"),
    "a Service selecting no pod": (_service_selects_nothing, "default", "rules"),
    "an unknown Kubernetes field": (_bad_field, "production", "validate"),
    "a TFJob field outside its CRD": (_bad_tfjob_field, "tfjob", "validate"),
    "MLflow's password in a pod that never talks to MLflow": (_mlflow_secret_in_the_detector, "production", "rules"),
    "training pods without MLflow's password": (_training_pods_without_the_mlflow_password, "indexed-job", "rules"),
    "MLflow's password readable by all": (_mlflow_password_readable_by_all, "production", "rules"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_chart_fails_the_check(breakage: str, tmp_path: Path) -> None:
    edit, values_name, check = BREAKAGES[breakage]
    chart = tmp_path / "carmesh"
    shutil.copytree(h.CHART, chart)
    values = h.load_values(VALUES[values_name])
    objects = h.render(h.CHART, values)
    assert h.validate(objects) == [] and h.rules(objects) == []  # the intact chart passes
    edit(chart)
    broken = h.render(chart, values)
    problems = {
        "check": lambda: h.check_config(broken, tmp_path / "mounts", keep_tls=h.mesh_tls_in_kit()),
        "rules": lambda: h.rules(broken),
        "validate": lambda: h.validate(broken),
    }[check]()
    assert problems, f"{breakage}: the check found nothing"
    if check == "check":
        assert any(re.search(r"exited 2", p) for p in problems), problems
