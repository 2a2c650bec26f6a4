"""bring-back's comparisons: one full scan of both sides, then scans of the cache alone, joined per key.

Before the flip back nothing but bring-back writes the old Redis (the apps write the cache; sync is stopped).
So the old Redis is read once, by the first round's full scan, whose workers spill each key's fold (spill.py);
bring-back then knows the old side per key: those folds, overlaid with what it read there since (each key it
compared, re-read after it wrote it). A later round scans the cache alone and joins its folds with that state,
bucket by bucket: only the keys whose folds differ are read again, on both sides.

The same state, at the flip back, is the basis of the straggler round's compare-and-set (`OldCas`): a key is
written on the old Redis only if it still holds what bring-back left there (WATCH, the key's canonical fold
read again, MULTI/EXEC); otherwise a new task wrote it there after the flip back and it is kept. Keys go in
batches of one WATCH ... EXEC (one slot at a time on a cluster), so that a late rollout's thousands of keys
take a few round trips each hundred, not four per key.

Limits: a write on the old Redis by someone else between the first round and the flip back is not seen (an
old task still running, an operator): it is neither overwritten nor reported. A key whose expiry falls between
two reads is re-read and settles as expired.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..batches import budgeted
from ..errors import RuntimeFailure
from ..keynames import readable
from ..net.endpoints import Topology, translated_errors
from ..net.keyspace import NO_EXPIRY, key_slot
from ..net.wire import ReplyError, Wire, pack
from ..rundir import DIR_MODE, RunDir
from ..verify.compare import compare_views, now_ms
from ..verify.fullscan import ScanJob, SideScans
from ..verify.readers import Detail, DigestReader, SideReader, View
from ..verify.spill import BUCKETS, BucketSpill, Known, bucket_of, fold_view, join, remove
from ..verify.stage import SourceReference
from ..workers import run_workers

ATTEMPTS = 5
CAS_BATCH = 200  # keys per WATCH ... EXEC in the straggler round
CAS_BATCH_BYTES = 8 << 20  # ... and bytes of writes queued in one transaction
JOINERS = 2
APPLIED, DELETED, KEPT, UNCHANGED = "applied", "deleted", "kept", "unchanged"
Cas = tuple[bytes, Known | None, list[bytes]]  # a key, what the old Redis should still hold, the writes


@dataclass
class OldState:
    """The old Redis per key: the spill of its last full scan, and the folds read since (None: absent), by bucket."""

    prefixes: list[Path] = field(default_factory=list)
    overlay: list[dict[bytes, Known | None]] = field(default_factory=lambda: [{} for _ in range(BUCKETS)])

    def know(self, key: bytes, known: Known | None) -> None:
        self.overlay[bucket_of(key_slot(key))][key] = known

    def differing(self, cache_prefixes: list[Path]) -> dict[bytes, Known | None]:
        """The keys that differ between the cache's spill and this state, with their known old state. The buckets'
        joins are Python work, split between JOINERS processes (the scans are over: the cores are free)."""
        found: dict[bytes, Known | None] = {}

        def work(first: int, send) -> None:
            for number in range(first, BUCKETS, JOINERS):
                send(join(BucketSpill(self.prefixes, number), self.overlay[number],
                          BucketSpill(cache_prefixes, number)))

        run_workers(range(JOINERS), work, found.update, JOINERS, name="bring-back-join")
        return found


class Scanner:
    """The scans of one bring-back: spill files in `<run-dir>/sync/bring-back/`, removed at the end."""

    def __init__(self, old: Topology, cache: Topology, run_dir: RunDir, grid: int, tolerance_ms: int) -> None:
        self.old, self.cache, self.grid, self.tolerance_ms = old, cache, grid, tolerance_ms
        self.detail = Detail.shared(cache, old)
        self.folder = run_dir.path / "sync" / "bring-back"
        self.folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(self.folder, DIR_MODE)
        self.state: OldState | None = None
        self.scans = 0
        self.pending: tuple[SideScans, list[Path], list[Path]] | None = None
        self.last_cache: list[Path] = []  # the last scan's cache spill, kept for the quiet check (quiet.py)

    def _jobs(self, side: str, topology: Topology) -> tuple[list[ScanJob], list[Path]]:
        prefixes = [self.folder / f"{side}{self.scans}-{index}" for index in range(len(topology.masters))]
        jobs = [ScanJob(topology.endpoint, node, topology.has_pexpiretime, self.grid, detail=self.detail,
                        spill=str(prefix)) for node, prefix in zip(topology.masters, prefixes)]
        return jobs, prefixes

    def start(self) -> None:
        """Start the next scan (its workers run while bring-back copies what the last one found): both sides the
        first time, the cache alone after. Safe to overlap with copies: the join waits for both, and a key copied
        after the scan passed it differs at most once more (read again, found equal), never less."""
        self.scans += 1
        cache_jobs, cache_prefixes = self._jobs("cache", self.cache)
        jobs, old_prefixes = {"cache": cache_jobs}, []
        if self.state is None:
            jobs["old"], old_prefixes = self._jobs("old", self.old)
        self.pending = (SideScans(jobs), cache_prefixes, old_prefixes)

    def discard(self) -> None:
        """A scan started for a round that will not come (the rounds stop): its workers stopped, its files removed."""
        if self.pending is None:
            return
        scans, cache_prefixes, old_prefixes = self.pending
        self.pending = None
        for workers in scans.workers.values():
            for _, _, process in workers:
                process.kill()
        scans.close()
        remove(cache_prefixes + old_prefixes)

    def candidates(self) -> tuple[dict[bytes, Known | None], dict]:
        """Keys whose folds differ between the cache now and the old side as known, with the old side's known fold.
        The first scan reads both sides (and the old side's spill becomes the state); later ones the cache alone."""
        if self.pending is None:
            self.start()
        scans, cache_prefixes, old_prefixes = self.pending
        self.pending = None
        both = bool(old_prefixes)
        with scans:
            done = scans.totals()
        if both:
            self.state = OldState(old_prefixes)
        remove(self.last_cache)
        self.last_cache = cache_prefixes
        found = self.state.differing(cache_prefixes)
        counts = {side: sum(r.keys for r in done[side]) for side in done}
        return found, {"scanned": "both" if both else "cache", "keys": counts, "candidates": len(found)}

    def read(self, keys: list[bytes]) -> dict[bytes, tuple[View, View]]:
        """Both sides' views of these keys (cache, old), and the old side's folds recorded as known."""
        reference, old_reader = SourceReference(self.cache, 0, self.detail), SideReader(self.old, detail=self.detail)
        try:
            cache_views = reference.read(keys)
            with translated_errors(self.old.endpoint):
                old_views = old_reader.read(keys)
        finally:
            reference.close()
            old_reader.close()
        self.know(old_views)
        return {key: (cache_views[key], old_views[key]) for key in keys}

    def differing(self, pairs: dict[bytes, tuple[View, View]]) -> dict[bytes, tuple[View, View]]:
        return compare_views({k: p[0] for k, p in pairs.items()}, {k: p[1] for k, p in pairs.items()},
                             self.tolerance_ms)

    def know(self, old_views: dict[bytes, View]) -> None:
        """What the old side was just read to hold becomes its known state for those keys."""
        for key, view in old_views.items():
            self.state.know(key, fold_view(key, view, self.grid))

    def reread_old(self, keys: list[bytes]) -> None:
        """After bring-back wrote these keys on the old side: their folds as they are now."""
        if not keys:
            return
        reader = SideReader(self.old, detail=self.detail)
        try:
            with translated_errors(self.old.endpoint):
                self.know(reader.read(keys))
        finally:
            reader.close()

    def close(self) -> None:
        self.discard()
        remove(self.last_cache)
        if self.state is not None:
            remove(self.state.prefixes)
        shutil.rmtree(self.folder, ignore_errors=True)


# --- after the flip back: compare-and-set on the old Redis ------------------------------------------------------

class OldCas:
    """Writes on the old Redis only where a key still holds what bring-back left there at the flip back."""

    def __init__(self, old: Topology, scanner: Scanner) -> None:
        self.old, self.scanner = old, scanner
        self.owners = old.slot_owners()
        self.readers: dict[int, DigestReader] = {}

    def _reader(self, key: bytes) -> DigestReader:
        index = self.owners[key_slot(key)]
        if index not in self.readers:
            node = self.old.masters[index]
            with translated_errors(self.old.endpoint):
                wire = Wire(self.old.endpoint, node.host, node.port)
            self.readers[index] = DigestReader(wire, self.old.has_pexpiretime, detail=self.scanner.detail)
        return self.readers[index]

    def apply(self, key: bytes, expected: Known | None, writes: list[bytes]) -> str:
        """`writes` (a RESTORE, a big key's chunks, or a DEL) if the key's fold is still `expected`; else KEPT."""
        for _ in range(ATTEMPTS):
            outcome = self._attempt([(key, expected, writes)]).get(key)
            if outcome is not None:
                return outcome
        return KEPT  # it keeps changing on the old Redis: a new task writes it

    def apply_all(self, items: list[Cas]) -> dict[bytes, str]:
        """`apply` for many keys, a batch of one group in one WATCH ... EXEC (`_batches`): a group is the whole node
        on a standalone Redis, one slot on a cluster (where WATCH and a transaction take a single slot). A big
        key's chunks go alone. A batch whose EXEC aborts (one of its keys changed between the look and the write: a new
        task's) goes key by key."""
        outcomes: dict[bytes, str] = {}
        groups: dict[int, list[Cas]] = {}
        for item in items:
            if len(item[2]) > 1:
                outcomes[item[0]] = self.apply(*item)
            else:
                slot = key_slot(item[0])
                groups.setdefault(slot if self.old.is_cluster else self.owners[slot], []).append(item)
        for group in groups.values():
            for batch in _batches(group):
                outcomes.update(self._attempt(batch))
                outcomes.update((key, self.apply(key, expected, writes)) for key, expected, writes in batch
                                if key not in outcomes)
        return outcomes

    def _attempt(self, batch: list[Cas]) -> dict[bytes, str]:
        """One WATCH of the batch's keys (one node), one read of all, one transaction with the writes of those still
        as expected. The outcome per key; none for the keys to write when the EXEC aborted."""
        reader = self._reader(batch[0][0])
        wire, keys = reader.wire, [key for key, _, _ in batch]
        outcomes, writing = {}, []
        with translated_errors(self.old.endpoint):
            wire.call(b"WATCH", *keys)
            for (key, expected, writes), view in zip(batch, reader.read(keys)):
                now = fold_view(key, view, self.scanner.grid)
                if not unchanged(expected, now, self.scanner.tolerance_ms):
                    outcomes[key] = KEPT
                elif not writes or (now is None and writes == [pack(b"DEL", key)]):
                    outcomes[key] = UNCHANGED
                else:
                    writing.append((key, writes))
            if not writing:
                wire.call(b"UNWATCH")
                return outcomes
            commands = [command for _, writes in writing for command in writes]
            wire.send(pack(b"MULTI") + b"".join(commands) + pack(b"EXEC"))
            replies = wire.read(len(commands) + 2)
        if replies[-1] is None:
            return outcomes
        errors = [r for r in [*replies[:-1], *replies[-1]] if isinstance(r, ReplyError)]
        if errors:
            others = f" or of the {len(writing) - 1} keys written with it" if len(writing) > 1 else ""
            raise RuntimeFailure(f"bring-back: the old Redis refused the write of {readable(writing[0][0])}{others} "
                                 f"({errors[0]})",
                                 "check the old Redis's health and memory; rerun rollback --bring-back")
        return outcomes | {key: DELETED if writes == [pack(b"DEL", key)] else APPLIED for key, writes in writing}

    def close(self) -> None:
        for reader in self.readers.values():
            reader.wire.close()
        self.readers.clear()


def _batches(items: list[Cas]) -> Iterator[list[Cas]]:
    """At most CAS_BATCH keys and CAS_BATCH_BYTES of writes a batch (a transaction's commands wait in the old
    Redis's memory until EXEC), at least one key."""
    return budgeted(items, lambda item: sum(map(len, item[2])), CAS_BATCH_BYTES, CAS_BATCH)


def unchanged(expected: Known | None, now: Known | None, tolerance_ms: int) -> bool:
    """The key holds what bring-back left there, or what it left has expired since (no one's write)."""
    if expected is None or now is None:
        return expected == now or (now is None and expected[1] != NO_EXPIRY
                                   and expected[1] <= now_ms() + tolerance_ms)
    return expected[0] == now[0]
