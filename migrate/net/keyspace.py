"""Keyspace facts: cluster slot routing (the same CRC16 that redis-py and the server use,
binascii.crc_hqx) and absolute expiries."""

from __future__ import annotations

from binascii import crc_hqx
from itertools import repeat

SLOT_COUNT = 16384
NO_EXPIRY = -1  # an absolute expiry (ms) for a key without a TTL: what PEXPIRETIME answers
GONE = -2       # what PTTL and PEXPIRETIME answer for a key that does not exist

# Where MEMORY USAGE is refused (ElastiCache Serverless), a key's size is guessed from its type's length.
LENGTH_COMMANDS = {"string": b"STRLEN", "hash": b"HLEN", "list": b"LLEN", "set": b"SCARD", "zset": b"ZCARD",
                   "stream": b"XLEN"}  # other types: EXISTS
KEY_OVERHEAD_BYTES = 50
MEMBER_BYTES_GUESS = 64  # per collection member (list element, set member, hash field and value, ...)


def key_slot(key: bytes) -> int:
    """The hash slot of a key, honouring {hash tags}."""
    if b"{" not in key:
        return crc_hqx(key, 0) % SLOT_COUNT
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return crc_hqx(key, 0) % SLOT_COUNT


def key_slots(keys: list[bytes]) -> list[int]:
    """The slot of each key; without hash tags in the batch, computed without a Python step per key."""
    if b"{" in b"".join(keys):
        return list(map(key_slot, keys))
    return [crc & (SLOT_COUNT - 1) for crc in map(crc_hqx, keys, repeat(0))]


def absolute_expiry(reply: int, now_ms: int | None) -> int:
    """A PEXPIRETIME reply (now_ms None) as it is, or a PTTL reply plus the server time it was read at:
    the key's absolute expiry in ms, NO_EXPIRY, or GONE."""
    if reply < 0:
        return NO_EXPIRY if reply == NO_EXPIRY else GONE
    return reply if now_ms is None else now_ms + reply


def estimated_size(key: bytes, type_name: str, length: int) -> int:
    """A key's size in bytes from its length command's reply (bytes of a string, members otherwise)."""
    return len(key) + KEY_OVERHEAD_BYTES + (length if type_name == "string" else length * MEMBER_BYTES_GUESS)
