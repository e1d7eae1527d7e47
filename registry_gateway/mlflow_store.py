"""Everything the gateway asks of MLflow. The MLflow client blocks, so each operation runs in a
worker thread, and its exceptions come back as the gateway's domain errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from kit.errors import Resource
from kit.registry_tags import MODEL_ARTIFACT_DIR, alias_history_key, alias_history_tag, parse_alias_history
from registry_gateway.errors import FailedPrecondition, NotFound, from_mlflow
from registry_gateway.metrics import RegistryMetrics
from registry_gateway.schema import (
    ModelVersionInfo,
    RegisteredModelInfo,
    registered_model_info,
    version_info,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
# Alias histories are tags (MLflow caps tag values at a few KB): keep the recent past only.
MAX_ALIAS_HISTORY = 100
_MAX_LISTED = 20


@dataclass(frozen=True)
class NewVersion:
    """What :meth:`MlflowStore.register_files` needs to log and register one version."""

    name: str
    files_dir: Path
    tags: Mapping[str, str]
    run_tags: Mapping[str, str]
    description: str


def _listing(items: list[str]) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _MAX_LISTED else "")


def _is(exc: MlflowException, *codes: str) -> bool:
    return str(exc.error_code) in codes


class MlflowStore:
    """The registry as the gateway sees it; every public method is a coroutine."""

    def __init__(
        self, tracking_uri: str, imports_experiment: str, metrics: RegistryMetrics, username: str = ""
    ) -> None:
        self.tracking_uri = tracking_uri
        self.username = username  # named in errors when MLflow refuses the gateway's credentials
        self._imports_experiment = imports_experiment
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._gateway_metrics = metrics

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        operation = fn.__name__.lstrip("_")  # the blocking implementation's name: list_versions, download, ...
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await asyncio.to_thread(fn, *args)
        except asyncio.CancelledError:
            outcome = "CANCELLED"  # the caller went away; the thread finishes unobserved
            raise
        except Exception as exc:
            error = from_mlflow(exc, self.tracking_uri, self.username)
            outcome = error.code.name
            raise error from exc
        finally:
            self._gateway_metrics.observe_mlflow(operation, outcome, time.perf_counter() - started)

    # -- reads --------------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._run(self._ping)

    async def list_models(self) -> list[RegisteredModelInfo]:
        return await self._run(self._list_models)

    async def list_versions(self, name: str) -> list[ModelVersionInfo]:
        return await self._run(self._list_versions, name)

    async def get_version(self, name: str, version: str) -> ModelVersionInfo:
        return await self._run(self._get_version, name, version)

    async def get_by_alias(self, name: str, alias: str) -> ModelVersionInfo:
        return await self._run(self._get_by_alias, name, alias)

    async def model_aliases(self, name: str) -> dict[str, str]:
        """Every alias of model ``name`` and the version it points at (one MLflow call); NotFound
        when the model is unknown."""
        return await self._run(self._model_aliases, name)

    # -- writes -------------------------------------------------------------------------------

    async def set_alias(self, name: str, alias: str, version: str) -> tuple[ModelVersionInfo, str]:
        return await self._run(self._set_alias, name, alias, version)

    async def delete_alias(self, name: str, alias: str) -> None:
        await self._run(self._delete_alias, name, alias)

    async def rollback_alias(self, name: str, alias: str) -> tuple[ModelVersionInfo, str]:
        return await self._run(self._rollback_alias, name, alias)

    async def register_files(self, new: NewVersion) -> ModelVersionInfo:
        return await self._run(self._register_files, new)

    async def download(self, info: ModelVersionInfo, dst_dir: Path) -> Path:
        return await self._run(self._download, info, dst_dir)

    # -- blocking implementations (worker threads) --------------------------------------------

    def _ping(self) -> None:
        self._client.search_registered_models(max_results=1)

    def _model_aliases(self, name: str) -> dict[str, str]:
        return dict(self._registered(name, list_known=False).aliases)

    def _model_names(self) -> list[str]:
        return sorted(m.name for m in self._all_models())

    def _all_models(self) -> list[Any]:
        models: list[Any] = []
        token: str | None = None
        while True:
            page = self._client.search_registered_models(max_results=100, page_token=token)
            models.extend(page)
            token = page.token
            if not token:
                return models

    def _registered(self, name: str, list_known: bool = True) -> Any:
        try:
            return self._client.get_registered_model(name)
        except MlflowException as exc:
            if _is(exc, "RESOURCE_DOES_NOT_EXIST"):
                # Listing the known models costs MLflow a search: not for watches, which anyone can
                # start with any name (docs/security.md, section 6).
                known = f"; registered models: {_listing(self._model_names())}" if list_known else ""
                raise NotFound(
                    f"registered model {name!r} not found{known}",
                    reason="MODEL_NOT_FOUND",
                    resource=Resource("registered model", name),
                ) from exc
            raise

    def _metrics(self, run_id: str, cache: dict[str, dict[str, float]]) -> dict[str, float]:
        if not run_id:
            return {}
        if run_id not in cache:
            try:
                cache[run_id] = dict(self._client.get_run(run_id).data.metrics)
            except MlflowException as exc:
                # A deleted run only costs the version its metrics.
                if not _is(exc, "RESOURCE_DOES_NOT_EXIST"):
                    raise
                cache[run_id] = {}
        return cache[run_id]

    def _info(self, mv: Any) -> ModelVersionInfo:
        return version_info(mv, self._metrics(mv.run_id or "", {}))

    def _list_models(self) -> list[RegisteredModelInfo]:
        result = []
        for rm in sorted(self._all_models(), key=lambda m: m.name):
            versions = [int(v.version) for v in rm.latest_versions or ()]
            result.append(registered_model_info(rm, str(max(versions)) if versions else ""))
        return result

    def _list_versions(self, name: str) -> list[ModelVersionInfo]:
        registered = self._registered(name)
        escaped = name.replace("\\", "\\\\").replace("'", "\\'")
        versions: list[Any] = []
        token: str | None = None
        while True:
            page = self._client.search_model_versions(f"name='{escaped}'", max_results=1000, page_token=token)
            versions.extend(page)
            token = page.token
            if not token:
                break
        cache: dict[str, dict[str, float]] = {}
        versions.sort(key=lambda v: int(v.version), reverse=True)
        # search_model_versions leaves aliases empty; the registered model has them all.
        aliases_of: dict[str, list[str]] = {}
        for alias, version in (getattr(registered, "aliases", None) or {}).items():
            aliases_of.setdefault(str(version), []).append(alias)
        return [
            replace(
                version_info(v, self._metrics(v.run_id or "", cache)),
                aliases=tuple(sorted(aliases_of.get(str(v.version), []))),
            )
            for v in versions
        ]

    def _version_numbers(self, name: str) -> list[str]:
        escaped = name.replace("\\", "\\\\").replace("'", "\\'")
        found = self._client.search_model_versions(f"name='{escaped}'", max_results=1000)
        return [str(v) for v in sorted(int(v.version) for v in found)]

    def _get_version(self, name: str, version: str) -> ModelVersionInfo:
        try:
            return self._info(self._client.get_model_version(name, version))
        except MlflowException as exc:
            if not _is(exc, "RESOURCE_DOES_NOT_EXIST"):
                raise
            self._registered(name)
            raise NotFound(
                f"model {name!r} has no version {version!r}; versions: {_listing(self._version_numbers(name))}",
                reason="VERSION_NOT_FOUND",
                resource=Resource("model version", f"{name}/{version}"),
            ) from exc

    def _get_by_alias(self, name: str, alias: str) -> ModelVersionInfo:
        rm = self._registered(name)
        aliases = dict(rm.aliases or {})
        if alias not in aliases:
            held = [f"{a} -> {v}" for a, v in sorted(aliases.items())]
            raise NotFound(
                f"model {name!r} has no alias {alias!r}; aliases: {_listing(held)}",
                reason="UNKNOWN_ALIAS",
                resource=Resource("model alias", f"{name}@{alias}"),
            )
        return self._get_version(name, aliases[alias])

    def _history(self, rm: Any, alias: str) -> list[str]:
        return parse_alias_history((rm.tags or {}).get(alias_history_key(alias)))

    def _save_history(self, name: str, alias: str, history: list[str]) -> None:
        value = alias_history_tag(history[-MAX_ALIAS_HISTORY:])
        self._client.set_registered_model_tag(name, alias_history_key(alias), value)

    def _set_alias(self, name: str, alias: str, version: str) -> tuple[ModelVersionInfo, str]:
        rm = self._registered(name)
        target = self._get_version(name, version)
        previous = str((rm.aliases or {}).get(alias, ""))
        self._client.set_registered_model_alias(name, alias, target.version)
        history = self._history(rm, alias)
        # An alias first set outside the gateway still gets its earlier holder remembered.
        if previous and (not history or history[-1] != previous):
            history.append(previous)
        if not history or history[-1] != target.version:
            history.append(target.version)
        self._save_history(name, alias, history)
        return self._get_version(name, target.version), previous

    def _delete_alias(self, name: str, alias: str) -> None:
        rm = self._registered(name)
        aliases = dict(rm.aliases or {})
        if alias not in aliases:
            held = [f"{a} -> {v}" for a, v in sorted(aliases.items())]
            raise NotFound(
                f"model {name!r} has no alias {alias!r}; aliases: {_listing(held)}",
                reason="UNKNOWN_ALIAS",
                resource=Resource("model alias", f"{name}@{alias}"),
            )
        self._client.delete_registered_model_alias(name, alias)
        # A deleted alias starts a new history when it is set again.
        if alias_history_key(alias) in (rm.tags or {}):
            self._client.delete_registered_model_tag(name, alias_history_key(alias))

    def _rollback_alias(self, name: str, alias: str) -> tuple[ModelVersionInfo, str]:
        rm = self._registered(name)
        current = (rm.aliases or {}).get(alias)
        if current is None:
            raise FailedPrecondition(
                f"alias {alias!r} of model {name!r} is not set; nothing to roll back", reason="NO_ROLLBACK_TARGET"
            )
        current = str(current)
        history = self._history(rm, alias)
        if not history or history[-1] != current:
            history.append(current)
        while history and history[-1] == current:
            history.pop()
        existing = set(self._version_numbers(name))
        # Versions deleted since they held the alias are skipped.
        while history and history[-1] not in existing:
            log.warning("alias history of %s@%s names deleted version %s; skipping it", name, alias, history[-1])
            history.pop()
        if not history:
            raise FailedPrecondition(
                f"alias {alias!r} of model {name!r} has no earlier version to roll back to "
                f"(it points at {current} and its history holds nothing before that)",
                reason="NO_ROLLBACK_TARGET",
            )
        target = history[-1]
        self._client.set_registered_model_alias(name, alias, target)
        self._save_history(name, alias, history)
        return self._get_version(name, target), current

    def _imports_experiment_id(self) -> str:
        experiment = self._client.get_experiment_by_name(self._imports_experiment)
        if experiment is not None:
            return str(experiment.experiment_id)
        try:
            return str(self._client.create_experiment(self._imports_experiment))
        except MlflowException as exc:
            # Another gateway replica created it between our two calls.
            if not _is(exc, "RESOURCE_ALREADY_EXISTS"):
                raise
            experiment = self._client.get_experiment_by_name(self._imports_experiment)
            if experiment is None:
                raise
            return str(experiment.experiment_id)

    def _register_files(self, new: NewVersion) -> ModelVersionInfo:
        run = self._client.create_run(
            self._imports_experiment_id(), run_name=f"import-{new.name}", tags=dict(new.run_tags)
        )
        run_id = run.info.run_id
        try:
            self._client.log_artifacts(run_id, str(new.files_dir), MODEL_ARTIFACT_DIR)
            try:
                self._client.create_registered_model(new.name)
            except MlflowException as exc:
                if not _is(exc, "RESOURCE_ALREADY_EXISTS"):
                    raise
            mv = self._client.create_model_version(
                new.name,
                f"{run.info.artifact_uri}/{MODEL_ARTIFACT_DIR}",
                run_id=run_id,
                tags=dict(new.tags),
                description=new.description or None,
            )
        except Exception:
            # The run stays as a record of the attempt, marked so nobody mistakes it for an import.
            with contextlib.suppress(Exception):
                self._client.set_terminated(run_id, status="FAILED")
            raise
        self._client.set_terminated(run_id)
        return self._info(mv)

    def _download(self, info: ModelVersionInfo, dst_dir: Path) -> Path:
        if not info.source:
            raise FailedPrecondition(f"model {info.name!r} version {info.version} has no artifact source")
        repo = get_artifact_repository(info.source, tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return Path(repo.download_artifacts(info.onnx_path, dst_path=str(dst_dir)))
