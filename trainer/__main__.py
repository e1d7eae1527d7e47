from kit.main import run_daemon
from trainer.app import DAEMON

raise SystemExit(run_daemon(DAEMON))
