"""Every daemon's ``__main__``: settings, logging, the skeleton, and the exit code.

Exit codes: 0 after a clean stop; 2 for settings or start-up failures the operator must fix
(:class:`ConfigError`, :class:`StartupError`); 1 for the system refusing (a port in use, ...).

``--check-config`` loads the settings exactly as a start does (defaults, ``CARMESH_*`` environment,
flags), prints them as JSON (secrets masked) and exits 0, or 2 with the reason, opening nothing:
what a deployment runs before rolling a daemon out (helm/carmesh's check runs it on every container).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from kit.config import ConfigError, load_settings, unknown_env
from kit.daemon import DaemonSpec, StartupError, serve
from kit.logs import setup_logging

EXIT_USAGE = 2
EXIT_OS = 1
CHECK_CONFIG_FLAG = "--check-config"
_EPILOG = (
    f"{CHECK_CONFIG_FLAG}: load and validate these settings as a start does, print them and exit 0, "
    "or exit 2 with the reason; opens no port, file or connection"
)


def run_daemon(spec: DaemonSpec[Any, Any], argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if CHECK_CONFIG_FLAG in args:
        return check_config(spec, [a for a in args if a != CHECK_CONFIG_FLAG], os.environ)
    try:
        cfg = load_settings(spec.settings, spec.env_prefix, args, prog=f"python -m {spec.name}", epilog=_EPILOG)
    except ConfigError as exc:
        print(f"{spec.name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(spec.name, cfg.log_level)
    log = logging.getLogger(spec.name)
    try:
        asyncio.run(serve(spec, cfg))
    # ConfigError: settings that only fail once used (an unreadable keys file, ...).
    except (ConfigError, StartupError) as exc:
        log.error("cannot start: %s", exc)
        return EXIT_USAGE
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_OS
    return 0


def check_config(spec: DaemonSpec[Any, Any], args: Sequence[str], environ: Mapping[str, str]) -> int:
    """``--check-config``: 0 with the settings on stdout, or 2 with the reason on stderr."""
    try:
        cfg = load_settings(
            spec.settings, spec.env_prefix, args, environ, prog=f"python -m {spec.name}", epilog=_EPILOG
        )
        # Start-up ignores variables it does not read; a deployment's misspelt one must not pass.
        unknown = unknown_env(spec.settings, spec.env_prefix, environ)
        if unknown:
            raise ConfigError(
                f"unknown environment variables {', '.join(unknown)}: no setting of {spec.name} reads them"
            )
    except ConfigError as exc:
        print(f"{spec.name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(cfg.model_dump_json())
    print(f"{spec.name}: settings OK", file=sys.stderr)
    return 0
