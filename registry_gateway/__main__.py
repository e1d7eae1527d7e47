from kit.main import run_daemon
from registry_gateway.app import DAEMON

raise SystemExit(run_daemon(DAEMON))
