"""Whether the apps still write to the cache: bring-back's cheap check before another full round.

A copy-back round after the first exists to pick up what the apps changed on the cache while the round before
ran. When they changed nothing, that round is a full scan of the cache that finds nothing. This check looks for
any write since the round's scan at a small part of that cost:

    values   the keys the round found (the apps' recent writes: the likeliest to be written again; at most
             HOT_KEYS) and 3 x keys / threshold keys drawn at random are read again and folded: one that
             differs from its fold in the round's scan is a write. If `threshold` keys or more had changed,
             uniformly, a sample that size misses them all with a chance of e^-3 (5%).
    names    a SCAN of the cache's key names (no values) against the round's, as a count and a sum of the
             names' hashes: a created or deleted key is a write. Keys that expire within a minute are left out
             on both sides (expiry is not a write: the old Redis expires them too).

Quiet means the rounds end (the next one would find fewer than the threshold). Whatever a sample misses is
still brought back: the straggler round after the flip back scans the whole cache, and the last compare
checks everything.
"""

from __future__ import annotations

import random
from itertools import filterfalse
from pathlib import Path

from xxhash import xxh3_64_intdigest

from ..net.endpoints import translated_errors
from ..net.keyspace import key_slot
from ..net.wire import Wire
from ..verify.compare import now_ms
from ..verify.spill import BUCKETS, BucketSpill, Known, bucket_of, fold_view
from ..verify.stage import SourceReference
from .copyback import Scanner, unchanged

HOT_KEYS = 2_000
CONFIDENCE = 3  # sample 3 x keys / threshold: misses `threshold` changed keys with a chance of e^-3
NAMES_SCAN_COUNT = 5000
EXPIRY_MARGIN_MS = 60_000  # a key that expires about when the check scans may or may not be seen: left out


def cache_is_quiet(scanner: Scanner, found: list[bytes], threshold: int, rng: random.Random | None = None) -> dict:
    """{"quiet": bool, "sampled": n, "changed": what showed a write (none when quiet)}."""
    rng = rng or random.Random()
    scanned = _scan_time_entries(scanner.last_cache, found, threshold, rng)
    changed = _changed_values(scanner, scanned)
    if changed:
        return {"quiet": False, "sampled": len(scanned), "changed": f"{changed} of the sampled keys"}
    if _names_changed(scanner, now_ms() + EXPIRY_MARGIN_MS):
        return {"quiet": False, "sampled": len(scanned), "changed": "the set of key names"}
    return {"quiet": True, "sampled": len(scanned), "changed": None}


def _scan_time_entries(prefixes: list[Path], found: list[bytes], threshold: int,
                       rng: random.Random) -> dict[bytes, Known]:
    """The sampled keys' folds as the round's scan of the cache read them: the hot keys, then random ones."""
    hot = set(rng.sample(found, HOT_KEYS) if len(found) > HOT_KEYS else found)
    by_bucket: list[set[bytes]] = [set() for _ in range(BUCKETS)]
    for key in hot:
        by_bucket[bucket_of(key_slot(key))].add(key)
    entries: dict[bytes, Known] = {}
    for number in range(BUCKETS):
        spill = BucketSpill(prefixes, number)
        per_bucket = -(-CONFIDENCE * len(spill.folds) // max(threshold, 1))
        entries.update(spill.sample(rng, per_bucket))
        entries.update(spill.known(by_bucket[number]) if by_bucket[number] else {})
    return entries


def _changed_values(scanner: Scanner, scanned: dict[bytes, Known]) -> int:
    """How many of these keys the cache holds otherwise now (an expiry that came due is no change)."""
    if not scanned:
        return 0
    reference = SourceReference(scanner.cache, 0, scanner.detail)
    try:
        views = reference.read(list(scanned))
    finally:
        reference.close()
    return sum(not unchanged(then, fold_view(key, views[key], scanner.grid), scanner.tolerance_ms)
               for key, then in scanned.items())


def _names_changed(scanner: Scanner, horizon_ms: int) -> bool:
    """Whether the cache's key names differ from the round's scan: compared as (count, sum of xxh3_64), keys
    whose expiry falls before `horizon_ms` left out on both sides. A name SCAN returned twice also differs
    (the rounds then go on: never the unsafe way)."""
    count = total = 0
    expiring: set[int] = set()
    for number in range(BUCKETS):
        bucket_count, bucket_total, bucket_expiring = BucketSpill(scanner.last_cache, number).names(horizon_ms)
        count, total = count + bucket_count, total + bucket_total
        expiring |= bucket_expiring
    return _names_now(scanner, expiring) != (count, total)


def _names_now(scanner: Scanner, leave_out: set[int]) -> tuple[int, int]:
    """(count, sum of xxh3_64) of the cache's key names but those left out: a SCAN without values (cheap for the
    servers), hashed and summed in C (no Python step per key)."""
    count = total = 0
    for node in scanner.cache.masters:
        with translated_errors(scanner.cache.endpoint):
            wire = Wire(scanner.cache.endpoint, node.host, node.port)
            try:
                cursor = b"0"
                while True:
                    cursor, keys = wire.call(b"SCAN", cursor, b"COUNT", b"%d" % NAMES_SCAN_COUNT)
                    hashes = list(filterfalse(leave_out.__contains__, map(xxh3_64_intdigest, keys)))
                    count, total = count + len(hashes), total + sum(hashes)
                    if cursor == b"0":
                        break
            finally:
                wire.close()
    return count, total
