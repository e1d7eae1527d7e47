from gateway.app import serve
from gateway.config import Settings
from kit.main import run_daemon

raise SystemExit(run_daemon("gateway", Settings, "CARMESH_GATEWAY_", serve))
