"""Keeps secrets out of every output: URLs are redacted, and known secrets are scrubbed from text."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_SECRETS: set[str] = set()
_MIN_SECRET_LEN = 3


def register_secret(secret: str | None) -> None:
    """Remember a password or token so that `scrub` removes it from any text printed later."""
    if secret and len(secret) >= _MIN_SECRET_LEN:
        _SECRETS.add(secret)


def scrub(text: str) -> str:
    """Replace every registered secret, and any password inside a URL, with ***."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    return re.sub(r"(\w+://[^:/@\s]*:)[^@\s]+@", r"\1***@", text)


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***, and no secret-bearing query arguments."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    query = re.sub(r"(password|token)=[^&]*", r"\1=***", parts.query, flags=re.I)
    return scrub(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))
