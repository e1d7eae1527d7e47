"""``python -m tests.deploy.check_runner MODULE``: runs many containers' configurations of one module in
one process (stdin: JSON list of {"args", "env"}; stdout: JSON list of {"rc", "stderr"}).

Each goes through the very function ``python -m MODULE`` calls (kit.main.check_config for a daemon's
``--check-config``, trainer.cluster.main for training pods) with the container's own arguments and
environment; one interpreter per module instead of one per container keeps helm-check fast."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import sys
from typing import Any

from kit.main import CHECK_CONFIG_FLAG, check_config


def _one(module: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            if module == "trainer.cluster":
                from trainer.cluster import main

                rc = main(args, env)
            else:
                spec = importlib.import_module(f"{module}.app").DAEMON
                rc = check_config(spec, [a for a in args if a != CHECK_CONFIG_FLAG], env)
        except SystemExit as exc:  # argparse: an unknown flag, a missing argument
            rc = exc.code if isinstance(exc.code, int) else 2
    return {"rc": rc, "stderr": err.getvalue()}


def main() -> int:
    module = sys.argv[1]
    configs = json.load(sys.stdin)
    json.dump([_one(module, c["args"], c["env"]) for c in configs], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
