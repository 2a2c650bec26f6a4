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
    """Replace every registered secret, any password inside a URL and the secret parts of any SigV4 token
    (an IAM auth token is signed per connection, so it cannot be registered before it is printed) with ***."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    return _mask_sigv4(_mask_url_passwords(text))


# The parts of a SigV4 query-signed URL (an ElastiCache IAM token) that let someone use it: the signature,
# the access key with its scope, and a session token. Names match case-insensitively, raw or %-encoded '='.
_SIGV4 = re.compile(r"(X-Amz-(?:Signature|Credential|Security-Token)(?:=|%3D))[^&\s\"']*", re.I)


def _mask_sigv4(text: str) -> str:
    if "x-amz-" not in text.lower():  # the common case: no token anywhere, no regex pass
        return text
    return _SIGV4.sub(r"\1***", text)


_USERINFO_END = re.compile(r"([@\s])")
_WORD = re.compile(r"\w")


def _mask_url_passwords(text: str) -> str:
    r"""`scheme://user:PASSWORD@` becomes `scheme://user:***@`, in time linear in the text.

    Same matches as re.sub(r"(\w+://[^:/@\s]*:)[^@\s]+@", r"\1***@"), which is quadratic on a long run
    of word characters (a 1 MB key name took hours). A password ends at the first @ or blank, so only
    a run of other characters followed by @ can hold one, and at most one."""
    parts = _USERINFO_END.split(text)
    for index in range(0, len(parts) - 1, 2):
        if parts[index + 1] == "@" and "://" in parts[index]:
            parts[index] = _mask_before_at(parts[index])
    return "".join(parts)


def _mask_before_at(run: str) -> str:
    """The run (which an @ follows) with everything after its URL's `user:` masked, if it has one."""
    start = run.find("://")
    while start >= 0:
        colon = run.find(":", start + 3)
        if colon < 0:
            return run
        if start and _WORD.match(run[start - 1]) and "/" not in run[start + 3:colon] and colon + 1 < len(run):
            return run[:colon + 1] + "***"
        start = run.find("://", start + 1)
    return run


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
