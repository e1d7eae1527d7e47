from detector.app import DAEMON
from kit.main import run_daemon

raise SystemExit(run_daemon(DAEMON))
