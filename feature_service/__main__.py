from feature_service.app import serve
from feature_service.config import Settings
from kit.main import run_daemon

raise SystemExit(run_daemon("feature_service", Settings, "CARMESH_FEATURE_", serve))
