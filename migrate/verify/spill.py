"""Per-key fingerprints spilled to disk by a scan worker, for the comparisons that need more than per-slot digests.

A verify keeps nothing per key (slotdigest.py). rollback --bring-back compares the same two sides several
times while the apps write to the cache, and those writes land in nearly every slot, so per-slot digests would
send almost every slot to descent (a second read of every key). With `ScanJob.spill`, a worker also writes
each key's fold (the same xxh3_128 it XORs into its slot's digest: name, type, value digest, expiry cell) to
BUCKETS files by slot range. Comparing two sides is then a join of their files, one bucket at a time (a
bucket's keys in memory, a sixteenth of the data set), and only the keys whose folds differ are read again.

An entry: slot (2 bytes), key length (4), absolute expiry (8, ms or -1), fold (16), key. A side's known state
of a key is (fold, expiry): the expiry tells a key the old side dropped by expiry from one a new task deleted.
A key SCAN returned twice has two entries with the same fold (or the later one, if it changed in between): the
join keeps one. Files are 0600 (key names are data).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

from .digest import DIGEST_TYPE_CODE
from .readers import View
from .slotdigest import fold

BUCKETS = 16
BUCKET_SHIFT = 10  # 16,384 slots / 16 buckets: a bucket is 1,024 consecutive slots
ENTRY = struct.Struct("<HIq16s")
FLUSH_BYTES = 1 << 20


def bucket_of(slot: int) -> int:
    return slot >> BUCKET_SHIFT


def bucket_path(prefix: str | Path, bucket: int) -> Path:
    return Path(f"{prefix}.{bucket:02d}")


class SpillWriter:
    """One worker's spill: BUCKETS append-only files named `<prefix>.NN`."""

    def __init__(self, prefix: str | Path) -> None:
        self.prefix = prefix
        self.buffers = [bytearray() for _ in range(BUCKETS)]
        self.files = [os.open(bucket_path(prefix, b), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                      for b in range(BUCKETS)]

    def flush(self, bucket: int) -> None:
        data = bytes(self.buffers[bucket])
        self.buffers[bucket].clear()
        written = 0
        while written < len(data):
            written += os.write(self.files[bucket], data[written:])

    def close(self) -> None:
        for bucket in range(BUCKETS):
            self.flush(bucket)
            os.close(self.files[bucket])


Known = tuple[bytes, int]  # (fold as 16 bytes, absolute expiry in ms or -1)


def read_bucket(prefixes: list[str | Path], bucket: int) -> dict[bytes, Known]:
    """key -> (fold, expiry) for one bucket of every listed spill (a side's workers)."""
    found: dict[bytes, Known] = {}
    size = ENTRY.size
    for prefix in prefixes:
        path = bucket_path(prefix, bucket)
        data = path.read_bytes() if path.exists() else b""
        at, end, unpack = 0, len(data), ENTRY.unpack_from
        while at < end:
            _, length, expire_at, folded = unpack(data, at)
            at += size
            found[data[at:at + length]] = (folded, expire_at)
            at += length
    return found


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


def differing(old: dict[bytes, Known | None], new: dict[bytes, Known]) -> Iterator[bytes]:
    """Keys whose folds differ between two sides' buckets (absent on one side included)."""
    for key, (folded, _) in new.items():
        known = old.get(key)
        if known is None or known[0] != folded:
            yield key
    for key, known in old.items():
        if known is not None and key not in new:
            yield key


__all__ = ["BUCKETS", "Known", "SpillWriter", "bucket_of", "differing", "fold_view", "read_bucket",
           "remove"]
