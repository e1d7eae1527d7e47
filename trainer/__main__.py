from kit.main import run_daemon
from trainer.app import serve
from trainer.config import Settings

raise SystemExit(run_daemon("trainer", Settings, "CARMESH_TRAINER_", serve))
