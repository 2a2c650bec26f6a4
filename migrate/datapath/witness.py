"""Witnesses: a few keys per replayed segment, checked later to catch a target that lost confirmed writes.

A target node restarted without persistence (or failed over to a replica that lagged) comes back
empty, or without its latest writes, and answers OK from then on. Replay would go on and finish
"green" over the keys that were confirmed before the loss. So for each segment marked done, replay
keeps the last-written key per target node (keys written last are the first a lagging replica
loses), and checks that they still exist when a replay resumes and after any lost connection.

The replay ledger (rundir.ReplayLedger) keeps them, as [key hex, expire_at], for its latest 64
segments: a total loss shows in any of them, a partial one in the most recent. The functions here
only choose and check them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..net.keyspace import NO_EXPIRY, key_slot
from .segments import Segment

MAX_KEY = 512            # longer names are not worth storing in the ledger
EXPIRY_MARGIN_MS = 600_000  # a witness must outlive the replay by this much, so that expiry is never "loss"


def choose(segment: Segment, owners: list[int], now_ms: int | None = None) -> list[list]:
    """The last key written to each target node, among keys that will not expire soon: [[hex, expire_at], ...].

    Replay writes a segment's DUMP records node by node, then its struct records."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    chosen: dict[int, list] = {}

    def usable(key: bytes, expire_at: int) -> bool:
        return len(key) <= MAX_KEY and (expire_at == NO_EXPIRY or expire_at >= now_ms + EXPIRY_MARGIN_MS)

    for record in reversed(segment.structs):
        node = owners[key_slot(record.key)]
        if node not in chosen and usable(record.key, record.expire_at):
            chosen[node] = [record.key.hex(), record.expire_at]
    for node, indices in segment.groups(owners):
        for index in reversed(indices):
            if node in chosen:
                break
            key, expire_at = segment.key_at(index), segment.expiries[index]
            if usable(key, expire_at):
                chosen[node] = [key.hex(), expire_at]
    return list(chosen.values())


def missing(witnesses: list[list], exists: Callable[[list[bytes]], list[bool]], now_ms: int | None = None
            ) -> list[bytes]:
    """Of the witnesses ([key hex, expire_at], ...), the keys the target no longer has (keys due to expire
    by now are not counted)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    keys = [bytes.fromhex(key) for key, expire_at in witnesses if expire_at == NO_EXPIRY or expire_at > now_ms + 5000]
    if not keys:
        return []
    return [key for key, present in zip(keys, exists(keys)) if not present]
