"""bring-back's join of two sides' spills (verify/spill.py) against the plain per-key join it replaces.

The join works on sets of folds and slices key names only for the entries missing on the other side; these
tests hold it to the per-key definition: every key whose fold differs between the cache and the old side as
known (its spill overlaid with what bring-back read there since) is found, with the old side's known state."""

from __future__ import annotations

import random

from migrate.net.keyspace import key_slot
from migrate.verify.slotdigest import fold
from migrate.verify.spill import BUCKETS, BucketSpill, SpillWriter, bucket_of, join

GRID = 2000


def folded(key: bytes, content: int, expire_at: int = -1) -> tuple[bytes, int]:
    return fold(key, 0, content, expire_at, GRID).to_bytes(16, "little"), expire_at


def spill(prefix, entries: list[tuple[bytes, int, int]]) -> None:
    """entries: (key, content, expiry) in scan order."""
    writer = SpillWriter(prefix)
    for key, content, expire_at in entries:
        writer.add([bucket_of(key_slot(key))], [key], [expire_at],
                   [int.from_bytes(folded(key, content, expire_at)[0], "little")])
    writer.close()


def joined(tmp_path, old_parts, cache_parts, overlay=None) -> dict:
    old_prefixes, cache_prefixes = [], []
    for side, parts, prefixes in (("old", old_parts, old_prefixes), ("cache", cache_parts, cache_prefixes)):
        for index, entries in enumerate(parts):
            prefixes.append(tmp_path / f"{side}-{index}")
            spill(prefixes[-1], entries)
    by_bucket = [{} for _ in range(BUCKETS)]
    for key, known in (overlay or {}).items():
        by_bucket[bucket_of(key_slot(key))][key] = known
    found = {}
    for number in range(BUCKETS):
        found.update(join(BucketSpill(old_prefixes, number), by_bucket[number], BucketSpill(cache_prefixes, number)))
    return found


def reference(old_parts, cache_parts, overlay) -> dict:
    """The per-key join: the last entry of a key wins, the overlay over the old side's spill."""
    known = {key: folded(key, content, expire_at) for part in old_parts for key, content, expire_at in part}
    known.update(overlay)
    cache = {key: folded(key, content, expire_at)[0] for part in cache_parts for key, content, expire_at in part}
    differ = {key for key, fold_now in cache.items() if known.get(key) is None or known[key][0] != fold_now}
    differ |= {key for key, state in known.items() if state is not None and key not in cache}
    return {key: known.get(key) for key in differ}


def test_changed_new_gone_and_equal_keys(tmp_path):
    old = [[(b"same", 1, -1), (b"changed", 1, -1), (b"gone", 1, 5_000_000), (b"ttl", 1, 1_000_000)]]
    cache = [[(b"same", 1, -1), (b"changed", 2, -1), (b"new", 1, -1), (b"ttl", 1, 9_000_000)]]
    assert joined(tmp_path, old, cache) == {b"changed": folded(b"changed", 1), b"new": None,
                                            b"gone": folded(b"gone", 1, 5_000_000),
                                            b"ttl": folded(b"ttl", 1, 1_000_000)}


def test_the_overlay_judges_the_keys_bring_back_read_since(tmp_path):
    old = [[(b"copied", 1, -1), (b"deleted", 1, -1), (b"recopied", 1, -1)]]
    cache = [[(b"copied", 2, -1), (b"recopied", 3, -1)]]
    overlay = {b"copied": folded(b"copied", 2), b"deleted": None, b"recopied": folded(b"recopied", 2)}
    assert joined(tmp_path, old, cache, overlay) == {b"recopied": folded(b"recopied", 2), b"deleted": None}


def test_a_key_scanned_twice_with_a_change_in_between_is_found_with_its_old_state(tmp_path):
    old = [[(b"k", 1, -1), (b"other", 1, -1)]]
    cache = [[(b"k", 1, -1), (b"other", 1, -1), (b"k", 2, -1)]]
    assert joined(tmp_path, old, cache) == {b"k": folded(b"k", 1)}


def test_random_sides_of_several_workers_match_the_per_key_join(tmp_path):
    rng = random.Random(7)
    keys = [b"key:%d" % index for index in range(6000)]
    old_state = {key: (rng.randrange(3), rng.choice([-1, -1, 4_000_000])) for key in keys if rng.random() < 0.9}
    cache_state = {key: (content + (rng.random() < 0.1), expire_at) for key, (content, expire_at) in old_state.items()
                   if rng.random() < 0.95}
    cache_state.update((key, (9, -1)) for key in keys if key not in old_state and rng.random() < 0.5)
    overlay = {}
    for key in rng.sample(keys, 800):  # read since: now as the cache has it, or absent
        state = cache_state.get(key) if rng.random() < 0.7 else None
        overlay[key] = folded(key, *state) if state else None
    old_parts = _split(rng, [(key, *state) for key, state in old_state.items()])
    cache_entries = [(key, *state) for key, state in cache_state.items()]
    cache_entries += [(key, *state) for key, state in rng.sample(sorted(cache_state.items()), 300)]  # SCAN's repeats
    cache_parts = _split(rng, cache_entries)
    found = joined(tmp_path, old_parts, cache_parts, overlay)
    expected = reference(old_parts, cache_parts, overlay)
    assert expected and {key: found.get(key) for key in expected} == expected
    extra = set(found) - set(expected)  # read again and found equal: keys the old side is known not to have
    assert all(overlay.get(key, 0) is None for key in extra)


def _split(rng, entries):
    rng.shuffle(entries)
    return [entries[:len(entries) // 3], entries[len(entries) // 3:]]
