from ingestor.app import serve
from ingestor.config import Settings
from kit.main import run_daemon

raise SystemExit(run_daemon("ingestor", Settings, "CARMESH_INGESTOR_", serve))
