"""The local MLflow's admin password hash, made cheap to check.

MLflow's basic-auth app checks the password of every request against the hash in its users
database, and creates the admin with werkzeug's default, scrypt (n=32768): about 95 ms of CPU per
request here. registry_gateway's alias watch asks MLflow once a second, so under `make up` the
checks alone took 10-23% of one of the machine's two cores, taken from training and serving. The
password is a random 32-character token (192 bits, ``stack_secret``): a deliberately slow hash
protects guessable passwords and adds nothing to one that cannot be guessed, so the stack stores a
salted single-iteration PBKDF2-SHA256 hash of it instead, which MLflow's check (werkzeug's
``check_password_hash``) reads like any other.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from werkzeug.security import generate_password_hash

FAST_METHOD = "pbkdf2:sha256:1"


def use_fast_hash(auth_db: Path, username: str, password: str) -> bool:
    """Rewrites ``username``'s hash with :data:`FAST_METHOD` unless it already uses it. False while MLflow
    has not created its users table or the user yet (call again once it answers)."""
    if not auth_db.exists():
        return False
    with sqlite3.connect(auth_db, timeout=10) as db:
        try:
            row = db.execute("SELECT password_hash FROM users WHERE username = ?", (username,)).fetchone()
        except sqlite3.OperationalError:  # no users table yet: MLflow is still migrating its database
            return False
        if row is None:
            return False
        if not str(row[0]).startswith(FAST_METHOD + "$"):
            new_hash = generate_password_hash(password, method=FAST_METHOD)
            db.execute("UPDATE users SET password_hash = ? WHERE username = ?", (new_hash, username))
    return True
