"""Per-slot digests of one side: fixed memory, whatever the number of keys.

A side is folded into 16,384 order-independent totals, one per hash slot: the XOR of
xxh3_128(key, type code, value digest, expiry cell) over the slot's keys, plus counts per slot and
type, and per slot with a TTL. Nothing is kept per key, so the full pass of a verify holds the same
few megabytes at 1M keys as at 50M. Two sides are equal in a slot when the totals and the counts agree;
the slots that differ are re-read key by key (descent.py).

Expiries are folded on a grid as wide as the TTL tolerance (expire_at // grid): two expiries in
different cells may differ by more than the tolerance, so their slot is compared key by key; two in
the same cell differ by less, which is no difference. Exact copies (PEXPIRETIME on both sides,
RESTORE ... ABSTTL) land in the same cell; PTTL-derived expiries (Redis < 7) jitter by a few ms, so
only the rare key next to a cell border makes its slot be compared key by key.

SCAN may return a key twice: XOR then cancels it and the counts are one too high, so the slot differs
from the other side's and descent settles it (and puts the slot's exact counts back).
"""

from __future__ import annotations

import struct
from array import array
from collections import Counter
from collections.abc import Iterable

from xxhash import xxh3_128_intdigest

from ..net.keyspace import NO_EXPIRY, SLOT_COUNT
from .digest import DIGEST_TYPE_CODE, DIGEST_TYPES

FOLD = struct.Struct("<BQq")
TYPE_COUNT = len(DIGEST_TYPES)


def fold(key: bytes, code: int, digest: int, expire_at: int, ttl_grid: int) -> int:
    """A key's share of its slot's XOR total: name, type code, digest and expiry cell."""
    cell = NO_EXPIRY if expire_at == NO_EXPIRY else expire_at // ttl_grid
    return xxh3_128_intdigest(key + FOLD.pack(code, digest, cell))


class SlotDigests:
    """One side's (or one master's) per-slot totals and counts. Picklable, and a few MB in all."""

    def __init__(self, node: str = "") -> None:
        self.node = node
        self.totals = [0] * SLOT_COUNT
        self.types = array("I", bytes(4 * SLOT_COUNT * TYPE_COUNT))  # [slot * TYPE_COUNT + type code]
        self.with_ttl = array("I", bytes(4 * SLOT_COUNT))

    def add(self, slot: int, key: bytes, code: int, digest: int, expire_at: int, grid: int) -> None:
        """One key (outside the scan's hot loop, which inlines this)."""
        self.totals[slot] ^= fold(key, code, digest, expire_at, grid)
        self.types[slot * TYPE_COUNT + code] += 1
        self.with_ttl[slot] += expire_at != NO_EXPIRY

    def merge(self, other: SlotDigests) -> SlotDigests:
        """Another master's digests into these (masters own disjoint slots; XOR and sums anyway)."""
        self.totals = [a ^ b for a, b in zip(self.totals, other.totals)]
        self.types = array("I", map(int.__add__, self.types, other.types))
        self.with_ttl = array("I", map(int.__add__, self.with_ttl, other.with_ttl))
        return self

    def keys_in(self, slot: int) -> int:
        start = slot * TYPE_COUNT
        return sum(self.types[start:start + TYPE_COUNT])

    def census(self, slot: int) -> tuple[int, int]:
        """The slot's keys, and how many of them have a TTL."""
        return self.keys_in(slot), self.with_ttl[slot]

    def differing(self, other: SlotDigests, slots: Iterable[int] | None = None) -> list[int]:
        """The slots (of `slots`, default all) whose totals or counts differ from `other`'s."""
        width = TYPE_COUNT
        return [slot for slot in (range(SLOT_COUNT) if slots is None else sorted(slots))
                if self.totals[slot] != other.totals[slot] or self.with_ttl[slot] != other.with_ttl[slot]
                or self.types[slot * width:(slot + 1) * width] != other.types[slot * width:(slot + 1) * width]]

    def recount(self, slot: int, views: Iterable) -> None:
        """Replace a slot's counts with those of its keys as re-read one by one (views with .type and
        .expire_at): a key the scan returned twice is then counted once."""
        start = slot * TYPE_COUNT
        self.types[start:start + TYPE_COUNT] = array("I", bytes(4 * TYPE_COUNT))
        self.with_ttl[slot] = 0
        for view in views:
            if view.present:
                self.types[start + DIGEST_TYPE_CODE[view.type]] += 1
                self.with_ttl[slot] += view.expire_at != NO_EXPIRY

    def counts(self, masters: dict[str, int]) -> dict:
        """Keys, with and without TTL, and by type, as verify's result shows them."""
        by_type: Counter = Counter()
        for code, name in enumerate(DIGEST_TYPES):
            by_type[name] = sum(self.types[code::TYPE_COUNT])
        keys = sum(by_type.values())
        with_ttl = sum(self.with_ttl)
        return {"keys": keys, "with_ttl": with_ttl, "without_ttl": keys - with_ttl,
                "by_type": dict(sorted((k, v) for k, v in by_type.items() if v)), "masters": masters}


def combined(parts: list[SlotDigests]) -> SlotDigests:
    """One side's digests over all of its masters."""
    side = SlotDigests()
    for part in parts:
        side.merge(part)
    return side
