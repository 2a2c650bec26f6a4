"""A key as a person reads it: escaped, so no terminal control sequence in a name reaches the screen,
and shortened when long, so a 1 MB name prints as one line that still tells keys apart.

Every human output (plan, the stages' summaries, verify, skipped keys) names keys through `readable`;
the JSON lines report keeps the full name (`escaped`, and the bytes in base64). Ledgers identify a
key exactly by `key_id`, since the name they show may be cut.
"""

from __future__ import annotations

import xxhash

SHOWN_CHARS = 60    # a long name shows this many (escaped) characters ...
WHOLE_CHARS = 100   # ... when its escaped form is longer than this; shorter names are shown whole
_ID_SHOWN = 12


def key_id(key: bytes) -> str:
    """The key's exact identity (128-bit xxh3 of its bytes, hex): how ledgers and verify match a key."""
    return xxhash.xxh3_128_hexdigest(key)


def escaped(key: bytes | str) -> str:
    """The whole name as printable text: UTF-8 where it is, backslash escapes for the rest."""
    text = key.decode("utf-8", "backslashreplace") if isinstance(key, bytes) else key
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def readable(key: bytes | str) -> str:
    """The name escaped; over WHOLE_CHARS, its first SHOWN_CHARS then `…[<length> bytes #<id>]`.

    A str is a name already recorded as text (a ledger's): it is escaped and shortened alike, and what
    `readable` returned comes back unchanged."""
    raw = key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key
    if len(raw) <= WHOLE_CHARS * 4:  # longer can't escape to WHOLE_CHARS or fewer: spare escaping it all
        whole = escaped(key)
        if len(whole) <= WHOLE_CHARS:
            return whole
    return f"{_head(raw)}…[{len(raw)} bytes #{key_id(raw)[:_ID_SHOWN]}]"


def _head(raw: bytes) -> str:
    """The first SHOWN_CHARS characters of the escaped name, never cut inside an escape."""
    pieces, size = [], 0
    for char in raw[:SHOWN_CHARS * 4 + 3].decode("utf-8", "backslashreplace"):
        piece = escaped(char)
        if size + len(piece) > SHOWN_CHARS:
            break
        pieces.append(piece)
        size += len(piece)
    return "".join(pieces)
