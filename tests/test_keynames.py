"""How key names and secrets reach a person: the scrubber is linear, names are escaped and shortened."""

from __future__ import annotations

import random
import re

import pytest

from migrate.keynames import WHOLE_CHARS, key_id, readable
from migrate.redact import scrub

OLD_PATTERN = re.compile(r"(\w+://[^:/@\s]*:)[^@\s]+@")


@pytest.mark.timeout(10, method="signal")  # the regex engine checks for signals, so a quadratic scrub fails here
def test_scrub_of_a_1_mb_word_runs_in_bounded_time_and_still_masks_url_passwords():
    name = "k" * (1 << 20)
    text = f"missing  {name}  source: redis://admin:Pa55word@host:6379/0 and rediss://:t0ken@cache"
    scrubbed = scrub(text)
    assert name in scrubbed
    assert "Pa55word" not in scrubbed and "t0ken" not in scrubbed
    assert "redis://admin:***@host:6379/0" in scrubbed and "rediss://:***@cache" in scrubbed
    assert scrub("a://b:" * 200_000).startswith("a://b:")  # many schemes, no @


def test_scrub_masks_what_the_old_pattern_masked():
    """The linear scrubber makes the same replacements as the old regular expression, on random text."""
    pieces = ["a", "b", ":", "/", "@", " ", "://", "x://", "é", "\n", "_", "1", "\u2003", "-"]
    rnd = random.Random(7)
    for _ in range(50_000):
        text = "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 16)))
        assert scrub(text) == OLD_PATTERN.sub(r"\1***@", text), repr(text)


def test_readable_escapes_control_characters_and_shortens_long_names_with_their_identity():
    assert readable(b"session:42") == "session:42" == readable("session:42")
    assert readable(b"\x1b]0;pwned\x07\r\xc2\x9b") == r"\x1b]0;pwned\x07\r\x9b"   # U+009B: the C1 CSI
    assert readable("\u202eevil") == r"\u202eevil"                     # a bidi override, from a ledger's text
    one, other = b"k" * (1 << 20), b"k" * ((1 << 20) - 1) + b"l"
    shown = readable(one)
    assert shown.startswith("k" * 60 + "…") and f"{1 << 20} bytes #{key_id(one)[:12]}" in shown
    assert len(shown) <= WHOLE_CHARS and readable(other) != shown
    assert readable(b"\x1b" * 200).startswith(r"\x1b" * 15 + "…")     # never cut inside an escape
    for key in (one, b"\x1b" * 200, "ключ".encode() * 40, b"\xff" * 500, b"plain"):
        assert readable(readable(key)) == readable(key)                # a ledger's name reads the same again
