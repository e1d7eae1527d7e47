"""The shape of every daemon's ``__main__``: settings, logging, serve, exit code."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import (
    Any,
    TypeVar,
)

from kit.config import BaseSettings, ConfigError, load_settings
from kit.logs import setup_logging

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def run_daemon(
    service: str,
    settings_cls: type[SettingsT],
    env_prefix: str,
    serve: Callable[[SettingsT], Coroutine[Any, Any, None]],
    argv: Sequence[str] | None = None,
) -> int:
    try:
        cfg = load_settings(
            settings_cls, env_prefix, sys.argv[1:] if argv is None else argv, prog=f"python -m {service}"
        )
    except ConfigError as exc:
        print(f"{service}: {exc}", file=sys.stderr)
        return 2
    setup_logging(service, cfg.log_level)
    try:
        asyncio.run(serve(cfg))
    except ConfigError as exc:  # settings that only fail once used (an unreadable keys file, ...)
        logging.getLogger(service).error("cannot start: %s", exc)
        return 2
    except OSError as exc:
        logging.getLogger(service).error("cannot start: %s", exc)
        return 1
    return 0
