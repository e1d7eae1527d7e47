"""Validated settings: defaults < environment (``CARMESH_<DAEMON>_<FIELD>``) < command-line flags.

Each daemon declares a pydantic model; :func:`load_settings` builds the flags from its
fields, so a field ``max_wait_ms`` is ``--max-wait-ms`` and ``CARMESH_DETECTOR_MAX_WAIT_MS``.
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from kit.mesh_tls import check_mesh_settings

SettingsT = TypeVar("SettingsT", bound="BaseSettings")


class ConfigError(Exception):
    """Settings that cannot be used; the message names the offending field and source."""


class BaseSettings(BaseModel):
    """Fields every daemon has."""

    # validate_default: cross-field checks (a maximum under its minimum) also see the defaults.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    host: str = "127.0.0.1"
    grpc_port: int = 0
    metrics_port: int = 0
    metrics: bool = Field(True, description="serve Prometheus /metrics on metrics_port (--no-metrics: off)")
    ready_file: Path | None = Field(
        None,
        description='once started, write {"grpc": HOST:PORT, "metrics": HOST:PORT or null, "pid": N} here '
        "(atomically), e.g. to learn the ports picked for port 0",
    )
    log_level: str = "INFO"
    # Seconds in-flight RPCs get to finish after SIGTERM.
    shutdown_grace_s: float = 10.0
    max_message_bytes: int = 64 * 1024 * 1024
    # Mutual TLS between daemons (kit/mesh_tls.py): all three files, or mesh_plaintext.
    mesh_ca_file: Path | None = Field(None, description="PEM bundle of the CA(s) that sign mesh certificates")
    mesh_cert_file: Path | None = Field(
        None, description="this daemon's mesh certificate (PEM); its common name is the daemon's identity"
    )
    mesh_key_file: Path | None = Field(None, description="the private key of mesh_cert_file (PEM)")
    mesh_plaintext: bool = Field(
        False, description="no TLS and no caller checks between daemons: for local runs and tests only"
    )

    @model_validator(mode="after")
    def _mesh_tls_chosen(self) -> BaseSettings:
        check_mesh_settings(self)
        return self


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, Sequence):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_list(a) for a in typing.get_args(annotation) if a is not type(None))
    return False


def _is_bool(annotation: Any) -> bool:
    return annotation is bool


def _parse_env_value(raw: str, annotation: Any) -> Any:
    if _is_list(annotation):
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw


def load_settings(
    cls: type[SettingsT],
    env_prefix: str,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    prog: str | None = None,
    epilog: str | None = None,
) -> SettingsT:
    """Builds ``cls`` from defaults, then ``environ``, then ``argv``; raises :class:`ConfigError`."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        env_name = f"{env_prefix}{name.upper()}"
        if env_name in environ:
            values[name] = _parse_env_value(environ[env_name], field.annotation)

    parser = argparse.ArgumentParser(prog=prog, description=cls.__doc__, epilog=epilog, allow_abbrev=False)
    for name, field in cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env_name = f"{env_prefix}{name.upper()}"
        help_text = f"{field.description or name} (env {env_name}; default {field.default!r})"
        if _is_bool(field.annotation):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif _is_list(field.annotation):
            parser.add_argument(
                flag,
                dest=name,
                default=None,
                help=help_text + "; comma-separated",
                type=lambda s: [i.strip() for i in s.split(",") if i.strip()],
            )
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text)
    args = parser.parse_args(list(argv) if argv is not None else [])
    for name, value in vars(args).items():
        if value is not None:
            values[name] = value
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {'; '.join(_describe(err, env_prefix) for err in exc.errors())}") from exc


def _describe(err: Any, env_prefix: str) -> str:
    loc = err.get("loc") or ()
    if not loc:  # a model-level validator: no single field to name
        return str(err["msg"])
    field = str(loc[0])
    where = ".".join(str(p) for p in loc)
    return f"{where}: {err['msg']} (set --{field.replace('_', '-')} or {env_prefix}{field.upper()})"


def stripped_entries(value: list[str]) -> list[str]:
    """For list settings: entries trimmed, none blank."""
    if any(not item.strip() for item in value):
        raise ValueError("entries must not be blank")
    return [item.strip() for item in value]


def existing_dirs(value: list[Path]) -> list[Path]:
    """For directory-list settings: each resolved, and failing at start rather than on every request later."""
    roots = []
    for root in value:
        resolved = root.expanduser().resolve()
        if not resolved.is_dir():
            raise ValueError(f"{str(root)!r} is not a directory")
        roots.append(resolved)
    return roots


def not_below(value: float, info: ValidationInfo, other: str) -> float:
    """For a maximum that must not be under its minimum setting ``other`` (e.g. retry delays)."""
    floor = info.data.get(other)
    if floor is not None and value < floor:
        raise ValueError(f"must be >= {other} ({floor})")
    return value


def unknown_env(cls: type[BaseSettings], env_prefix: str, environ: Mapping[str, str]) -> list[str]:
    """Names in ``environ`` under ``env_prefix`` that no field of ``cls`` reads: start-up ignores them,
    so a misspelt variable would silently leave its default in force."""
    known = {f"{env_prefix}{name.upper()}" for name in cls.model_fields}
    return sorted(name for name in environ if name.startswith(env_prefix) and name not in known)
