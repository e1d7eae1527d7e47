"""Every daemon's ``__main__``: settings, logging, the skeleton, and the exit code.

Exit codes: 0 after a clean stop; 2 for settings or start-up failures the operator must fix
(:class:`ConfigError`, :class:`StartupError`); 1 for the system refusing (a port in use, ...).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

from kit.config import ConfigError, load_settings
from kit.daemon import DaemonSpec, StartupError, serve
from kit.logs import setup_logging

EXIT_USAGE = 2
EXIT_OS = 1


def run_daemon(spec: DaemonSpec[Any, Any], argv: Sequence[str] | None = None) -> int:
    try:
        cfg = load_settings(
            spec.settings, spec.env_prefix, sys.argv[1:] if argv is None else argv, prog=f"python -m {spec.name}"
        )
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
