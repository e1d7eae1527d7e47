"""The offline check of helm/carmesh (``make helm-check``): strict lint, render per values file, every
object validated against a pinned Kubernetes version (CRDs against their published schemas in
crd_schemas/), our own rules, and every daemon container's command, args and environment run through
``python -m <daemon> --check-config``. Each function returns the problems it found (empty: fine)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import yaml

from tests.helpers import REPO_ROOT

CHART = REPO_ROOT / "helm" / "carmesh"
VALUES_DIR = CHART / "ci"
CRD_SCHEMAS = Path(__file__).parent / "crd_schemas"
# Rendered manifests land here (git-ignored), one folder per values file.
RENDERED = REPO_ROOT / ".run" / "helm"
KUBE_VERSION = "1.31.0"
NAMESPACE = "carmesh"
RELEASE = "carmesh"

# Who may call whom (DESIGN.md), written independently of the chart's own table so that a change
# to either is caught. "external": the gateway's public port, open to networkPolicy.gatewayFrom.
DESIGNED_CALLERS: dict[str, set[str]] = {
    "gateway": {"external"},
    "registry-gateway": {"gateway", "detector", "trainer", "training"},
    "detector": {"gateway"},
    "ingestor": {"gateway"},
    "feature-service": {"gateway", "trainer", "training"},
    "trainer": {"gateway"},
    "tracker": {"gateway"},
}
# The pods of TFJobs that `carmesh train --render-tfjob` prints: training pods too.
CLI_TFJOB_LABELS = {"app.kubernetes.io/name": "carmesh-trainer", "app.kubernetes.io/part-of": "carmesh"}
DAEMON_MODULES = {"gateway", "registry_gateway", "detector", "ingestor", "feature_service", "trainer", "tracker"}
# Settings the chart sets for mesh and public TLS; daemons have them once the mesh TLS work is merged.
TLS_SETTINGS = ("MESH_CA_FILE", "MESH_CERT_FILE", "MESH_KEY_FILE", "MESH_PLAINTEXT")
GATEWAY_TLS_SETTINGS = ("PUBLIC_CERT_FILE", "PUBLIC_KEY_FILE", "PUBLIC_PLAINTEXT")
POD_KINDS = {"Deployment", "Job", "StatefulSet", "DaemonSet"}
COMPONENT = "app.kubernetes.io/component"
# The pods that talk to MLflow (DESIGN.md): only they may hold its credentials (external.mlflow.credentialsSecret).
MLFLOW_CLIENTS = {"registry-gateway", "trainer", "training"}
MLFLOW_SECRET_DIR = "/etc/carmesh/secrets/mlflow"


def values_files() -> list[Path]:
    return sorted(VALUES_DIR.glob("*.yaml"))


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def lint(chart: Path, values: Mapping[str, Any]) -> list[str]:
    report = helm_python.lint(
        str(chart), dict(values), strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}"
    )
    # Strict: warnings count; infos (e.g. "icon is recommended") do not.
    problems = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
    return problems + list(report["errors"])


def render(chart: Path, values: Mapping[str, Any]) -> list[dict[str, Any]]:
    manifests = helm_python.Chart.load(str(chart)).render(
        dict(values), name=RELEASE, namespace=NAMESPACE, is_install=True
    )
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def write_rendered(name: str, objects: list[dict[str, Any]], root: Path = RENDERED) -> Path:
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    target = out / "manifests.yaml"
    target.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    return target


# --- schema validation --------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """A CRD schema that refuses fields it does not name, as `kubectl apply --validate=strict` does."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def crd_validator(kind: str, api_version: str) -> jsonschema.Draft7Validator | None:
    group, _, version = api_version.rpartition("/")
    path = CRD_SCHEMAS / f"{kind.lower()}-{group}-{version}.json"
    if not path.is_file():
        return None
    return jsonschema.Draft7Validator(_strict(json.loads(path.read_text())))


def validate(objects: Iterable[dict[str, Any]]) -> list[str]:
    problems = []
    for obj in objects:
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        group = obj["apiVersion"].rpartition("/")[0]
        if "." in group and not group.endswith(".k8s.io"):  # a custom resource
            validator = crd_validator(obj["kind"], obj["apiVersion"])
            if validator is None:
                problems.append(f"{where}: no schema for {obj['apiVersion']} {obj['kind']} in {CRD_SCHEMAS.name}/")
                continue
            for e in validator.iter_errors(obj):
                problems.append(f"{where}: {'.'.join(map(str, e.absolute_path))}: {e.message}")
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{where}: {obj['apiVersion']} {obj['kind']} does not exist in Kubernetes {KUBE_VERSION}")
    return problems


# --- our rules ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    """A pod template in a workload, with where it came from."""

    owner: str
    kind: str
    labels: dict[str, str]
    spec: dict[str, Any]

    def containers(self) -> Iterator[tuple[dict[str, Any], bool]]:
        """(container, is an init container)."""
        for c in self.spec.get("initContainers", []):
            yield c, True
        for c in self.spec.get("containers", []):
            yield c, False


def pods(objects: Iterable[dict[str, Any]]) -> list[Pod]:
    found = []
    for obj in objects:
        owner = f"{obj['kind']}/{obj['metadata']['name']}"
        spec = obj.get("spec", {})
        templates: list[dict[str, Any]] = []
        if obj["kind"] in POD_KINDS:
            templates = [spec["template"]]
        elif obj["kind"] == "TFJob":
            templates = [r["template"] for r in spec["tfReplicaSpecs"].values()]
        elif obj["kind"] == "ServingRuntime":
            templates = [{"metadata": {"labels": {}}, "spec": {"containers": spec["containers"]}}]
        for t in templates:
            found.append(Pod(owner, obj["kind"], dict(t.get("metadata", {}).get("labels", {})), t["spec"]))
    return found


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def rules(objects: list[dict[str, Any]]) -> list[str]:
    problems = []
    all_pods = pods(objects)
    for pod in all_pods:
        pod_sc = pod.spec.get("securityContext", {})
        for c, init in pod.containers():
            where = f"{pod.owner} container {c['name']}"
            sc = c.get("securityContext", {})
            limits = c.get("resources", {}).get("limits", {})
            if not {"cpu", "memory"} <= set(limits):
                problems.append(f"{where}: no cpu and memory limits")
            if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
                problems.append(f"{where}: may run as root (runAsNonRoot)")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem is writable")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allows privilege escalation")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}: keeps Linux capabilities")
            image = c.get("image", "")
            if not re.search(r":[^/:]+$", image):
                problems.append(f"{where}: image {image!r} has no tag")
            # Batch pods (Jobs, TFJobs) run to completion: probes are for long-running servers.
            if pod.kind in ("Deployment", "ServingRuntime") and not init:
                for probe in ("readinessProbe", "livenessProbe"):
                    if probe not in c:
                        problems.append(f"{where}: no {probe}")
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if any(s.endswith(":latest") or s == "latest" for s in _strings(obj)):
            problems.append(f"{where}: refers to `latest`")
        if obj["kind"] == "Service":
            selector = obj["spec"].get("selector", {})
            if not any(_selects(selector, p.labels) for p in all_pods):
                problems.append(f"{where}: selects no pod ({selector})")
        if obj["kind"] == "NetworkPolicy":
            problems += _network_policy(obj, all_pods)
    return problems + mlflow_credentials(all_pods)


def _mlflow_volumes(pod: Pod) -> list[dict[str, Any]]:
    """The pod's volumes that hold MLflow's password: mounted at MLFLOW_SECRET_DIR, or a Secret projecting
    a key to ``password`` under a name that says MLflow."""
    mounted = {
        m["name"] for c, _ in pod.containers() for m in c.get("volumeMounts", []) if m["mountPath"] == MLFLOW_SECRET_DIR
    }
    return [v for v in pod.spec.get("volumes", []) if v["name"] in mounted or "mlflow" in v["name"]]


def mlflow_credentials(all_pods: list[Pod]) -> list[str]:
    """When any pod holds MLflow's credentials, exactly the MLflow clients do: a read-only 0400 Secret volume
    at MLFLOW_SECRET_DIR in each of their containers, whose password file a setting or argument names; no
    container anywhere gets an MLflow password through its environment."""
    problems = []
    for pod in all_pods:
        for c, _ in pod.containers():
            for item in c.get("env", []):
                if item["name"] == "MLFLOW_TRACKING_PASSWORD" or item["name"].endswith("MLFLOW_PASSWORD"):
                    problems.append(f"{pod.owner} container {c['name']}: MLflow's password in the environment")
    holders = [pod for pod in all_pods if _mlflow_volumes(pod)]
    if not holders:
        return problems  # MLflow without basic auth
    password_file = f"{MLFLOW_SECRET_DIR}/password"
    for pod in all_pods:
        component = pod.labels.get(COMPONENT, "")
        volumes = _mlflow_volumes(pod)
        if component not in MLFLOW_CLIENTS:
            if volumes:
                problems.append(
                    f"{pod.owner}: {component or pod.kind} holds MLflow's password but never talks to MLflow"
                )
            continue
        if len(volumes) != 1:
            problems.append(f"{pod.owner}: {component} talks to MLflow without its password mounted")
            continue
        secret = volumes[0].get("secret", {})
        if secret.get("defaultMode") != 0o400 or "password" not in {i.get("path") for i in secret.get("items", [])}:
            problems.append(f"{pod.owner}: MLflow's password is not a 0400 file from a Secret: {volumes[0]}")
        named = False
        for c, _ in pod.containers():
            mounts = [m for m in c.get("volumeMounts", []) if m["name"] == volumes[0]["name"]]
            if [(m["mountPath"], m.get("readOnly")) for m in mounts] != [(MLFLOW_SECRET_DIR, True)]:
                problems.append(f"{pod.owner} container {c['name']}: MLflow's Secret not mounted read-only once")
            env_values = [str(item.get("value", "")) for item in c.get("env", [])]
            named = named or password_file in [*env_values, *map(str, c.get("args", []))]
        if not named:
            problems.append(f"{pod.owner}: no setting or argument names {password_file}")
    return problems


def _network_policy(obj: dict[str, Any], all_pods: list[Pod]) -> list[str]:
    where = f"NetworkPolicy/{obj['metadata']['name']}"
    selector = obj["spec"]["podSelector"].get("matchLabels", {})
    targets = [p for p in all_pods if _selects(selector, p.labels)]
    if not targets:
        return [f"{where}: selects no pod ({selector})"]
    component = selector.get(COMPONENT, "")
    if component not in DESIGNED_CALLERS:
        return []  # training pods' own policy: checked by its own test
    grpc_rules = [
        r for r in obj["spec"].get("ingress", []) if {"port": "grpc", "protocol": "TCP"} in r.get("ports", [])
    ]
    if len(grpc_rules) != 1:
        return [f"{where}: expected one rule for the gRPC port, found {len(grpc_rules)}"]
    peers = grpc_rules[0].get("from")
    if DESIGNED_CALLERS[component] == {"external"}:
        return []  # any source, or networkPolicy.gatewayFrom
    if peers is None:
        return [f"{where}: the gRPC port of {component} admits every source"]
    callers = set()
    for peer in peers:
        labels = peer.get("podSelector", {}).get("matchLabels", {})
        if set(peer) != {"podSelector"}:
            return [f"{where}: admits a peer outside the namespace's pods: {peer}"]
        if labels == CLI_TFJOB_LABELS:
            callers.add("training")
        elif labels.get("app.kubernetes.io/instance") == RELEASE and labels.get("app.kubernetes.io/name") == "carmesh":
            callers.add(labels.get(COMPONENT, "?"))
        else:
            return [f"{where}: admits pods that are not this release's: {peer}"]
    if callers != DESIGNED_CALLERS[component]:
        return [f"{where}: {component} admits {sorted(callers)}, the design says {sorted(DESIGNED_CALLERS[component])}"]
    return []


# --- the daemons' own check ---------------------------------------------------------------------


def mesh_tls_in_kit() -> bool:
    """Whether the daemons have mesh TLS settings (the lead's mesh TLS work, merged separately)."""
    from kit.config import BaseSettings

    return "mesh_ca_file" in BaseSettings.model_fields


@dataclass(frozen=True)
class Run:
    """One command a container would run, as --check-config or --dry-run runs it here."""

    where: str
    module: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]


def _container_env(c: dict[str, Any], where: str, problems: list[str]) -> dict[str, str]:
    env = {}
    for item in c.get("env", []):
        if "value" not in item:
            problems.append(f"{where}: {item['name']} has no literal value (settings are literal, secrets are files)")
            continue
        env[item["name"]] = str(item["value"])
    return env


def runs(objects: list[dict[str, Any]], mounts_root: Path, keep_tls: bool) -> tuple[list[Run], list[str]]:
    """The commands of every container, with mount paths moved under ``mounts_root`` (created, so
    settings that must name an existing folder see one)."""
    problems: list[str] = []
    found = []
    for pod in pods(objects):
        if pod.kind == "ServingRuntime":
            continue  # Triton's own image
        mount_paths = sorted(
            {m["mountPath"] for c, _ in pod.containers() for m in c.get("volumeMounts", [])}, key=len, reverse=True
        )

        def moved(value: str, mount_paths: list[str] = mount_paths) -> str:
            for mount in mount_paths:
                if value == mount or value.startswith(mount + "/"):
                    local = mounts_root / mount.strip("/").replace("/", "_")
                    local.mkdir(parents=True, exist_ok=True)
                    return str(local) + value[len(mount) :]
            return value

        for c, _ in pod.containers():
            where = f"{pod.owner} container {c['name']}"
            command = c.get("command", [])
            if command[:2] != ["python", "-m"] or len(command) != 3:
                problems.append(f"{where}: command {command} is not `python -m MODULE`")
                continue
            module = command[2]
            env = _container_env(c, where, problems)
            if not keep_tls:
                env = {k: v for k, v in env.items() if not k.endswith(TLS_SETTINGS + GATEWAY_TLS_SETTINGS)}
            args = [moved(a) for a in c.get("args", [])]
            env = {k: moved(v) for k, v in env.items()}
            if module == "trainer_worker":
                if args[:1] != ["--job-dir"] or len(args) != 2:
                    problems.append(f"{where}: trainer_worker takes exactly --job-dir DIR, got {args}")
                continue
            if module == "trainer.cluster":
                args.append("--dry-run")
                env.setdefault("JOB_COMPLETION_INDEX", "0")
            elif module in DAEMON_MODULES:
                args.append("--check-config")
            else:
                problems.append(f"{where}: unknown module {module}")
                continue
            found.append(Run(where, module, tuple(args), tuple(sorted(env.items()))))
    return found, problems


def _execute(module: str, batch: list[Run]) -> dict[tuple[Any, ...], str]:
    """Every run of ``module`` through its check in one interpreter (tests/deploy/check_runner.py)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.deploy.check_runner", module],
        input=json.dumps([{"args": list(r.args), "env": dict(r.env)} for r in batch]),
        cwd=REPO_ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        return {(r.module, r.args, r.env): f"checking {module} failed: {done.stderr.strip()[-800:]}" for r in batch}
    return {
        (r.module, r.args, r.env): f"{r.where}: python -m {r.module} {' '.join(r.args)} exited {res['rc']}: "
        f"{res['stderr'].strip()[-800:]}"
        for r, res in zip(batch, json.loads(done.stdout), strict=True)
        if res["rc"] != 0
    }


def check_config(objects: list[dict[str, Any]], mounts_root: Path, keep_tls: bool) -> list[str]:
    return check_configs({"": objects}, mounts_root, keep_tls)[""]


def check_configs(
    rendered: Mapping[str, list[dict[str, Any]]], mounts_root: Path, keep_tls: bool
) -> dict[str, list[str]]:
    """The problems of each rendering; identical commands are run once, each module in one interpreter."""
    problems: dict[str, list[str]] = {}
    by_module: dict[str, dict[tuple[Any, ...], Run]] = {}
    owners: dict[tuple[Any, ...], list[str]] = {}
    for name, objects in rendered.items():
        found, problems[name] = runs(objects, mounts_root, keep_tls)
        for r in found:
            key = (r.module, r.args, r.env)
            by_module.setdefault(r.module, {}).setdefault(key, r)
            owners.setdefault(key, []).append(name)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for failures in pool.map(lambda item: _execute(item[0], list(item[1].values())), by_module.items()):
            for key, failure in failures.items():
                for name in owners[key]:
                    problems[name].append(failure)
    return problems
