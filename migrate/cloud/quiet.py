"""Whether the apps still write to the cache: bring-back's cheap check before another full round.

A copy-back round after the first exists to pick up what the apps changed on the cache while the round before
ran. When they changed nothing, that round is a full scan of the cache that finds nothing. This check looks for
any write since the round's scan at a small part of that cost:

    values   the keys the round found (the apps' recent writes: the likeliest to be written again; at most
             HOT_KEYS) and 3 x keys / threshold keys drawn at random are read again and folded: one that
             differs from its fold in the round's scan is a write. If `threshold` keys or more had changed,
             uniformly, a sample that size misses them all with a chance of e^-3 (5%).
    count    DBSIZE against the keys the round's scan saw: a created or deleted key is a write. Equal to
             the scan's entries (its files' sizes) is the common case. Otherwise the distinct keys are counted:
             SCAN may return a key twice, and keys that expire within a minute may be counted or not (expiry is
             not a write: the old Redis expires them too), so the count may lie anywhere between the keys that
             outlive that minute and all of them. A creation and a deletion at once, one hidden among those
             expiring keys or behind a key SCAN returned twice, are left to the value sample. (A SCAN of every
             name would see them too, at twice the whole check's cost.)

Quiet means the rounds end (the next one would find fewer than the threshold). Whatever a sample misses is
still brought back: the straggler round after the flip back scans the whole cache, and the last compare
checks everything.
"""

from __future__ import annotations

import random
from pathlib import Path

from ..net.keyspace import key_slot
from ..verify.compare import now_ms
from ..verify.spill import BUCKETS, BucketSpill, Known, bucket_of, entry_count, fold_view
from ..verify.stage import SourceReference
from .copyback import Scanner, unchanged

HOT_KEYS = 2_000
CONFIDENCE = 3  # sample 3 x keys / threshold: misses `threshold` changed keys with a chance of e^-3
EXPIRY_MARGIN_MS = 60_000  # a key that expires about when the check scans may or may not be seen: left out


def cache_is_quiet(scanner: Scanner, found: list[bytes], threshold: int, rng: random.Random | None = None) -> dict:
    """{"quiet": bool, "sampled": n, "changed": what showed a write (none when quiet)}."""
    rng = rng or random.Random()
    scanned = _sample_of_the_round(scanner.last_cache, found, threshold, rng)
    changed = _changed_values(scanner, scanned)
    if changed:
        return {"quiet": False, "sampled": len(scanned), "changed": f"{changed} of the sampled keys"}
    keys_now = scanner.cache.key_count()
    fits, seen = _count_fits(scanner.last_cache, keys_now, now_ms() + EXPIRY_MARGIN_MS)
    if not fits:
        return {"quiet": False, "sampled": len(scanned),
                "changed": f"the key count ({keys_now:,} now, {seen:,} in the round's scan)"}
    return {"quiet": True, "sampled": len(scanned), "changed": None}


def _sample_of_the_round(prefixes: list[Path], found: list[bytes], threshold: int,
                         rng: random.Random) -> dict[bytes, Known]:
    """The sampled keys' folds as the round's scan of the cache read them: the hot keys, then random ones."""
    hot = set(rng.sample(found, HOT_KEYS) if len(found) > HOT_KEYS else found)
    by_bucket: list[set[bytes]] = [set() for _ in range(BUCKETS)]
    for key in hot:
        by_bucket[bucket_of(key_slot(key))].add(key)
    entries: dict[bytes, Known] = {}
    for number in range(BUCKETS):
        spill = BucketSpill(prefixes, number)
        per_bucket = -(-CONFIDENCE * len(spill) // max(threshold, 1))
        entries.update(spill.sample(rng, per_bucket))
        entries.update(spill.known(by_bucket[number]) if by_bucket[number] else {})
    return entries


def _count_fits(prefixes: list[Path], keys_now: int, horizon_ms: int) -> tuple[bool, int]:
    """Whether `keys_now` fits what the round's scan saw, and how many keys it saw: as many as it has entries (the
    common case, read from the files' sizes), or else between its distinct keys that outlive `horizon_ms` and all
    of them (a key SCAN returned twice, keys expiring meanwhile)."""
    entries = entry_count(prefixes)
    if keys_now == entries:
        return True, entries
    alive = expiring = 0
    for number in range(BUCKETS):
        bucket_alive, bucket_expiring = BucketSpill(prefixes, number).distinct_keys(horizon_ms)
        alive, expiring = alive + bucket_alive, expiring + bucket_expiring
    return alive <= keys_now <= alive + expiring, alive


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
