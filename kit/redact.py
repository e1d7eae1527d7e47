"""Redacts the passwords of URLs (``rtsp://user:pass@host/...`` -> ``rtsp://user:***@host/...``).

Stream URLs, DSNs and service URLs may carry credentials in their userinfo; anything that logs,
stores or returns such a URL (logs, error messages, frames' ``source``, ListSources) shows it
through :func:`redact_url`. It works on any text, so a message quoting a URL is safe too.
"""

from __future__ import annotations

import re

REDACTED = "***"
# scheme://user:password@ -- the password runs to the last '@' before the host part, so a
# password holding '@' or ':' is redacted whole; '/', '?', '#' and whitespace end the userinfo.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*):(?P<password>[^/?#\s]*)@")


def redact_url(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***`` (user names stay)."""
    return _USERINFO.sub(lambda m: f"{m['head']}:{REDACTED}@", text)
