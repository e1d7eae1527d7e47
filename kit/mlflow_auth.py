"""MLflow credentials of the daemons that talk to MLflow (registry_gateway, the trainer and its workers).

The user is a literal setting (``mlflow_username``) or a file (``mlflow_username_file``: a Kubernetes
basic-auth Secret's ``username`` key); the password is always a file (``mlflow_password_file``): a flag
would show in ``ps``. MLflow's client reads basic-auth credentials only from its own variables
(``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``, looked up on every request), so a daemon
reads the files once at start and hands them to its process environment, explicitly in its app.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from kit.secret_files import read_password

USERNAME_VARIABLE = "MLFLOW_TRACKING_USERNAME"
PASSWORD_VARIABLE = "MLFLOW_TRACKING_PASSWORD"
# What MLflow's client calls a 401 and a 403 (mlflow.exceptions.get_error_code), JSON body or not.
REFUSED_CODES = ("UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED", "PERMISSION_DENIED")
SETTING_NAMES = ("mlflow_username", "mlflow_username_file", "mlflow_password_file")


def check_settings(
    username: str,
    username_file: Path | None,
    password_file: Path | None,
    names: tuple[str, str, str] = SETTING_NAMES,
) -> None:
    """Basic auth needs a user (literal or file, not both) and a password file, or none of them: anything
    else is a typo (ValueError naming the settings as ``names`` spell them)."""
    user, user_file, pw_file = names
    if username.strip() and username_file is not None:
        raise ValueError(f"give {user} or {user_file}, not both")
    has_user = bool(username.strip()) or username_file is not None
    if has_user != (password_file is not None):
        raise ValueError(
            f"give {pw_file} with {user} or {user_file} (MLflow's basic auth needs a user and a password), or none"
        )


def read_username(username: str, username_file: Path | None) -> str:
    """The literal user, or the first line of ``username_file`` (ConfigError naming the file)."""
    from_file = read_password(username_file, what="MLflow username")
    return from_file if from_file is not None else username.strip()


def credentials_env(username: str, password_file: Path | None, username_file: Path | None = None) -> dict[str, str]:
    """MLflow's variables for the user and the first line of ``password_file`` ({} without a file). Raises
    kit.config.ConfigError naming the file, never its content, when a file is unreadable or empty."""
    password = read_password(password_file, what="MLflow password")
    if password is None:
        return {}
    return {USERNAME_VARIABLE: read_username(username, username_file), PASSWORD_VARIABLE: password}


def apply(credentials: Mapping[str, str], environ: MutableMapping[str, str] | None = None) -> None:
    """Puts ``credentials`` (from :func:`credentials_env`) where MLflow's client reads them: this process's
    environment, which the processes it starts inherit. Nothing given: whatever the environment holds."""
    (os.environ if environ is None else environ).update(credentials)


def user_of(credentials: Mapping[str, str]) -> str:
    """The user in ``credentials`` ("" when none), for logs and error messages; never the password."""
    return credentials.get(USERNAME_VARIABLE, "")


def refused(exc: BaseException) -> bool:
    """Whether MLflow refused the caller's credentials (HTTP 401 or 403)."""
    return str(getattr(exc, "error_code", "")) in REFUSED_CODES


def refused_hint(tracking_uri: str, username: str) -> str:
    """What an operator reads when MLflow refuses: which credentials, and where they come from."""
    who = f"user {username!r}" if username else "a caller without credentials (no mlflow_password_file)"
    return (
        f"MLflow at {tracking_uri} refused {who}: check the MLflow user and the password in mlflow_password_file, "
        "and that the user may use the registry"
    )
