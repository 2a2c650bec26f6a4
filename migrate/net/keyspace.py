"""Keyspace facts: cluster slot routing (the same CRC16 that redis-py and the server use,
binascii.crc_hqx) and absolute expiries."""

from __future__ import annotations

from binascii import crc_hqx
from itertools import repeat
from operator import and_

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
    return list(map(and_, map(crc_hqx, keys, repeat(0)), repeat(SLOT_COUNT - 1)))


def absolute_expiry(reply: int, now_ms: int | None) -> int:
    """A PEXPIRETIME reply (now_ms None) as it is, or a PTTL reply plus the server time it was read at:
    the key's absolute expiry in ms, NO_EXPIRY, or GONE."""
    if reply < 0:
        return NO_EXPIRY if reply == NO_EXPIRY else GONE
    return reply if now_ms is None else now_ms + reply


def estimated_size(key: bytes, type_name: str, length: int) -> int:
    """A key's size in bytes from its length command's reply (bytes of a string, members otherwise)."""
    return len(key) + KEY_OVERHEAD_BYTES + (length if type_name == "string" else length * MEMBER_BYTES_GUESS)


class SlotRanges:
    """A set of hash slots given as "A-B[,C-D]" (--slots): what one run dir copies and verifies, so that
    several machines can split a source, each with its own run dir. `in` and iteration give slots."""

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self.ranges = tuple(sorted(ranges))
        flags = bytearray(SLOT_COUNT)
        for start, end in self.ranges:
            flags[start:end + 1] = b"\x01" * (end - start + 1)
        self.flags = bytes(flags)  # one byte per slot: a key's membership is one index

    @classmethod
    def parse(cls, text: str) -> SlotRanges:
        """"0-8191", "8192-16383", "0-99,200-299", "42"; raises ValueError naming the bad part."""
        ranges = []
        for part in (text or "").split(","):
            bounds = part.strip().split("-")
            if len(bounds) > 2 or not all(b.strip().isdigit() for b in bounds):
                raise ValueError(f"{part.strip()!r} is not a slot range A-B")
            start, end = int(bounds[0]), int(bounds[-1])
            if not 0 <= start <= end < SLOT_COUNT:
                raise ValueError(f"{part.strip()!r} is not within 0-{SLOT_COUNT - 1} (with A <= B)")
            ranges.append((start, end))
        overlap = overlaps([cls([r]) for r in ranges])
        if overlap:
            raise ValueError(f"the ranges overlap at slots {overlap}")
        return cls(ranges)

    def __contains__(self, slot: int) -> bool:
        return bool(self.flags[slot])

    def __iter__(self):
        for start, end in self.ranges:
            yield from range(start, end + 1)

    def __len__(self) -> int:
        return sum(end - start + 1 for start, end in self.ranges)

    def __eq__(self, other) -> bool:
        return isinstance(other, SlotRanges) and self.ranges == other.ranges

    def __hash__(self) -> int:
        return hash(self.ranges)

    def __str__(self) -> str:
        return ",".join(f"{a}-{b}" if b != a else f"{a}" for a, b in self.ranges)

    @property
    def everything(self) -> bool:
        return len(self) == SLOT_COUNT

    def intersects(self, ranges: tuple[tuple[int, int], ...]) -> bool:
        """Whether any slot of these (a cluster node's) ranges is in this set."""
        return any(self.flags[start:end + 1].count(1) for start, end in ranges)

    def keep(self, keys: list[bytes]) -> list[bytes]:
        """The keys whose slot is in this set."""
        flags = self.flags
        return [key for key, slot in zip(keys, key_slots(keys)) if flags[slot]]


def _runs(slots: list[int]) -> str:
    """Slots as "A-B,C" text (a sorted list)."""
    parts, start = [], None
    for index, slot in enumerate(slots):
        if start is None:
            start = slot
        if index + 1 == len(slots) or slots[index + 1] != slot + 1:
            parts.append(f"{start}-{slot}" if slot != start else f"{slot}")
            start = None
    return ",".join(parts)


def overlaps(sets: list[SlotRanges]) -> str:
    """The slots held by more than one of these sets, as "A-B" text ("" for none)."""
    seen = [0] * SLOT_COUNT
    for ranges in sets:
        for start, end in ranges.ranges:
            for slot in range(start, end + 1):
                seen[slot] += 1
    return _runs([slot for slot, n in enumerate(seen) if n > 1])


def coverage(sets: list[SlotRanges]) -> tuple[str, str]:
    """Whether these sets cover 0-16383 exactly once: (gaps, overlaps) as "A-B" text, both "" when so."""
    held = bytearray(SLOT_COUNT)
    for ranges in sets:
        for index, flag in enumerate(ranges.flags):
            held[index] |= flag
    gaps = _runs([slot for slot, flag in enumerate(held) if not flag])
    return gaps, overlaps(sets)
