"""The one syntax of the names carmesh keys things by: camera ids, data set names, source ids,
model names, alias names and snapshot names.

A name is 1-128 characters of ASCII letters, digits, ``.``, ``_`` and ``-``, starting with a
letter or digit; case is kept and matters (``Gate-1`` and ``gate-1`` are two cameras). No
``:`` (the separator of Redis keys), ``/`` (paths, object keys), whitespace, glob characters
or control characters, so a name is safe inside a Redis key, a file or object name and a log
line. Aliases also take no ``.`` (MLflow's alias rule). Daemons check names where a request
enters (INVALID_ARGUMENT with reason INVALID_NAME and the field); consumers check the names of
records from Kafka, which older producers may have written unchecked.
"""

from __future__ import annotations

import re

from kit.errors import InvalidArgument

MAX_NAME_CHARS = 128
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_NAME = re.compile(rf"^{NAME_PATTERN}$")
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
NAME_RULE = "1-128 characters of letters, digits, '.', '_' and '-', starting with a letter or digit"
ALIAS_RULE = "1-128 characters of letters, digits, '_' and '-', starting with a letter or digit"
ALIAS = "alias"


class InvalidName(InvalidArgument):
    """A camera id, data set, source, model, alias or snapshot name outside the name syntax."""

    reason = "INVALID_NAME"


def name_problem(kind: str, value: str) -> str | None:
    """Why ``value`` is not a valid ``kind`` name (e.g. "camera id"), or None when it is one."""
    pattern, rule = (_ALIAS, ALIAS_RULE) if kind == ALIAS else (_NAME, NAME_RULE)
    if pattern.fullmatch(value):
        return None
    shown = value if len(value) <= MAX_NAME_CHARS else value[:MAX_NAME_CHARS] + "..."
    return f"{kind} {shown!r} is not valid: use {rule}"


def is_valid_name(kind: str, value: str) -> bool:
    return name_problem(kind, value) is None


def validate_name(kind: str, value: str, field: str) -> str:
    """``value`` when it is a valid ``kind`` name; else raises :class:`InvalidName` naming ``field``."""
    problem = name_problem(kind, value)
    if problem is not None:
        raise InvalidName(problem, field=field, metadata={"kind": kind})
    return value
