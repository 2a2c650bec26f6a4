"""Per-key fingerprints spilled to disk by a scan worker, for the comparisons that need more than per-slot digests.

A verify keeps nothing per key (slotdigest.py). rollback --bring-back compares the same two sides several
times while the apps write to the cache, and those writes land in nearly every slot, so per-slot digests would
send almost every slot to descent (a second read of every key). With `ScanJob.spill`, a worker also writes
each key's fold (the same xxh3_128 it XORs into its slot's digest: name, type, value digest, expiry cell) to
BUCKETS pairs of files by slot range. Comparing two sides is then a join of their files, one bucket at a time
(a sixteenth of the data set in memory), and only the keys whose folds differ are read again.

Why the join needs no key names: a fold hashes the key's name with its content, so two sides hold a key alike
exactly when they hold the same fold. The join is a set difference of 16-byte folds, done in C; only the few
entries whose folds are missing on the other side have their names sliced out (`join`).

Files: `<prefix>.NN` holds fixed-width entries (fold 16 bytes, xxh3_64 of the name 8, absolute expiry 8 as ms
or -1, where the name starts in the names file 8, its length 4), `<prefix>.NN.keys` the names. A side's known
state of a key is (fold, expiry): the expiry tells a key the old side dropped by expiry from one a new task
deleted. A key SCAN returned twice has two entries. Files are 0600 (key names are data).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from functools import cached_property
from itertools import accumulate, compress, count
from operator import not_
from pathlib import Path

from xxhash import xxh3_64_intdigest

from .digest import DIGEST_TYPE_CODE
from .readers import View
from .slotdigest import fold

BUCKETS = 16
BUCKET_SHIFT = 10  # 16,384 slots / 16 buckets: a bucket is 1,024 consecutive slots
ENTRY = struct.Struct("<16sQqQI")
FOLDS = struct.Struct("<16s28x")
NAME_HASHES = struct.Struct("<16xQ20x")
NAME_HASHES_AND_EXPIRIES = struct.Struct("<16xQq12x")
FLUSH_BYTES = 1 << 20

Known = tuple[bytes, int]  # (fold as 16 bytes, absolute expiry in ms or -1)


def bucket_of(slot: int) -> int:
    return slot >> BUCKET_SHIFT


def bucket_path(prefix: str | Path, bucket: int) -> Path:
    return Path(f"{prefix}.{bucket:02d}")


def names_path(prefix: str | Path, bucket: int) -> Path:
    return Path(f"{prefix}.{bucket:02d}.keys")


class SpillWriter:
    """One worker's spill: BUCKETS pairs of append-only files, `<prefix>.NN` and `<prefix>.NN.keys`."""

    def __init__(self, prefix: str | Path) -> None:
        self.entries = [bytearray() for _ in range(BUCKETS)]
        self.names = [bytearray() for _ in range(BUCKETS)]
        self.files = [(_create(bucket_path(prefix, b)), _create(names_path(prefix, b))) for b in range(BUCKETS)]
        self.flushed = [0] * BUCKETS  # bytes of names already written, per bucket

    def add(self, buckets: Iterable[int], keys: list[bytes], expires: Iterable[int], folds: Iterable[int]) -> None:
        """A batch of keys' entries (the scan worker's hot loop: one pack and two appends per key)."""
        entries, names, flushed, pack = self.entries, self.names, self.flushed, ENTRY.pack
        for bucket, key, expire_at, folded, name_hash in zip(buckets, keys, expires, folds,
                                                             map(xxh3_64_intdigest, keys)):
            entries[bucket] += pack(folded.to_bytes(16, "little"), name_hash, expire_at,
                                    flushed[bucket] + len(names[bucket]), len(key))
            names[bucket] += key
            if len(names[bucket]) > FLUSH_BYTES:
                self.flush(bucket)

    def flush(self, bucket: int) -> None:
        self.flushed[bucket] += len(self.names[bucket])
        for buffer, fd in zip((self.entries[bucket], self.names[bucket]), self.files[bucket]):
            _write_all(fd, bytes(buffer))
            buffer.clear()

    def close(self) -> None:
        for bucket in range(BUCKETS):
            self.flush(bucket)
            for fd in self.files[bucket]:
                os.close(fd)


def _create(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)


def _write_all(fd: int, data: bytes) -> None:
    written = 0
    while written < len(data):
        written += os.write(fd, data[written:])


class BucketSpill:
    """One bucket of one side (every worker's files of that side, in order): its folds, and entries by index."""

    def __init__(self, prefixes: list[str | Path], bucket: int) -> None:
        self.parts = [(_read(bucket_path(prefix, bucket)), _read(names_path(prefix, bucket))) for prefix in prefixes]
        self.firsts = list(accumulate((len(entries) // ENTRY.size for entries, _ in self.parts), initial=0))

    def __len__(self) -> int:
        return self.firsts[-1]

    @cached_property
    def folds(self) -> list[bytes]:
        return [fold for entries, _ in self.parts for (fold,) in FOLDS.iter_unpack(entries)]

    def at(self, indices: Iterable[int]) -> Iterator[tuple[bytes, Known]]:
        """(key, (fold, expiry)) of the entries at these (ascending) indices."""
        part, unpack, size = 0, ENTRY.unpack_from, ENTRY.size
        for index in indices:
            while index >= self.firsts[part + 1]:
                part += 1
            entries, names = self.parts[part]
            folded, _, expire_at, start, length = unpack(entries, (index - self.firsts[part]) * size)
            yield names[start:start + length], (folded, expire_at)

    def sample(self, rng, count: int) -> Iterator[tuple[bytes, Known]]:
        """`count` entries drawn at random (all of them if there are fewer)."""
        return self.at(sorted(rng.sample(range(len(self)), min(count, len(self)))))

    def distinct_keys(self, horizon_ms: int) -> tuple[int, int]:
        """How many distinct keys (by name hash) outlive `horizon_ms`, and how many others expire before it."""
        alive: set[int] = set()
        expiring: set[int] = set()
        for entries, _ in self.parts:
            for name_hash, expire_at in NAME_HASHES_AND_EXPIRIES.iter_unpack(entries):
                (alive if expire_at == -1 or expire_at > horizon_ms else expiring).add(name_hash)
        return len(alive), len(expiring - alive)

    def known(self, keys: set[bytes]) -> dict[bytes, Known]:
        """The entries of these keys (the last one where a key has two), found by name hash first."""
        hashes = set(map(xxh3_64_intdigest, keys))
        name_hashes = (name_hash for entries, _ in self.parts for (name_hash,) in NAME_HASHES.iter_unpack(entries))
        maybe = compress(count(), map(hashes.__contains__, name_hashes))
        return {key: known for key, known in self.at(maybe) if key in keys}


def entry_count(prefixes: list[str | Path]) -> int:
    """How many entries a side's spill holds (keys SCAN returned, a key returned twice counted twice)."""
    return sum(path.stat().st_size // ENTRY.size for prefix in prefixes for bucket in range(BUCKETS)
               if (path := bucket_path(prefix, bucket)).exists())


def _read(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


def join(old: BucketSpill, overlay: dict[bytes, Known | None], cache: BucketSpill) -> dict[bytes, Known | None]:
    """The keys that differ between the cache and the old side as known (its spill overlaid by `overlay`: the
    folds read there since, None for absent), each with the old side's known state (None: absent there).
    A key in the overlay is judged by the overlay alone; a cache entry whose fold the old side has nowhere is
    a key changed or created on the cache; an old entry whose fold the cache has nowhere, one changed or gone."""
    in_cache, in_old = set(cache.folds), set(old.folds)
    found: dict[bytes, Known | None] = {
        key: known for key, known in old.at(_missing(old.folds, in_cache)) if key not in overlay}
    in_old.update(known[0] for known in overlay.values() if known is not None)
    new_on_cache = {key for key, _ in cache.at(_missing(cache.folds, in_old))}
    found.update((key, overlay[key]) for key in new_on_cache if key in overlay)
    unresolved = {key for key in new_on_cache if key not in overlay and key not in found}
    found.update(dict.fromkeys(unresolved))  # new keys, most likely; an old entry that also matched a cache entry
    found.update(old.known(unresolved) if unresolved else {})  # (a key SCAN returned twice, changed) is rare
    found.update((key, known) for key, known in overlay.items() if known is None or known[0] not in in_cache)
    return found


def _missing(folds: list[bytes], elsewhere: set[bytes]) -> Iterator[int]:
    """Indices of the folds the other side does not have."""
    return compress(count(), map(not_, map(elsewhere.__contains__, folds)))


def fold_view(key: bytes, view: View, grid: int) -> Known | None:
    """A key's (fold, expiry) from a View read one by one (as the scan folds it); None when absent."""
    if not view.present:
        return None
    return fold(key, DIGEST_TYPE_CODE[view.type], view.digest, view.expire_at, grid).to_bytes(16, "little"), \
        view.expire_at


def remove(prefixes: list[str | Path]) -> None:
    for prefix in prefixes:
        for bucket in range(BUCKETS):
            bucket_path(prefix, bucket).unlink(missing_ok=True)
            names_path(prefix, bucket).unlink(missing_ok=True)


__all__ = ["BUCKETS", "BucketSpill", "Known", "SpillWriter", "bucket_of", "entry_count", "fold_view", "join",
           "remove"]
