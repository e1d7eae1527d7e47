from detector.app import serve
from detector.config import Settings
from kit.main import run_daemon

raise SystemExit(run_daemon("detector", Settings, "CARMESH_DETECTOR_", serve))
