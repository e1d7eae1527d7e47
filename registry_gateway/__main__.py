from kit.main import run_daemon
from registry_gateway.app import serve
from registry_gateway.config import Settings

raise SystemExit(run_daemon("registry_gateway", Settings, "CARMESH_REGISTRY_", serve))
