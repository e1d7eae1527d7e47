from kit.main import run_daemon
from tracker.app import DAEMON

raise SystemExit(run_daemon(DAEMON))
