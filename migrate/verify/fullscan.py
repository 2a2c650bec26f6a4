"""Full scans of one side, one worker process per master, folded into per-slot digests.

Why processes: digesting is Python work, and the two sides (and each master of a cluster) are
read at the same time, so each master gets its own process and both cores are used.

Each worker SCANs its master with a large COUNT, reads every key with a DigestReader and folds
xxh3_128(key, type, digest, expiry cell) into its slot's digest (slotdigest.py: the expiry grid, and
why a key SCAN returns twice is harmless). It keeps nothing per key: its memory is the same at 1M
keys as at 50M. Where the two sides' digests differ, descent.py re-reads just those slots.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Collection
from dataclasses import dataclass
from itertools import compress, repeat
from multiprocessing.connection import Connection, wait
from operator import floordiv, rshift

from xxhash import xxh3_128_intdigest as xxh3

from .. import errors
from ..children import die_with_parent, raise_relayed, relay_errors
from ..net.endpoints import Endpoint, Node, translated_errors
from ..net.keyspace import NO_EXPIRY, key_slots
from ..net.wire import Wire, pack
from .readers import NO_DETAIL, Batch, Columns, Detail, DigestReader, columns_of
from .slotdigest import FOLD, TYPE_COUNT, SlotDigests, combined, fold
from .spill import BUCKET_SHIFT, SpillWriter

__all__ = ["ScanJob", "ScanTotals", "SideScans", "combined", "fold"]

SCAN_COUNT = 1000
PROGRESS_EVERY = 20_000


@dataclass(frozen=True)
class ScanJob:
    """What one worker reads: a master of an endpoint, and how to fold."""

    endpoint: Endpoint
    node: Node
    exact_ttl: bool       # PEXPIRETIME (Redis 7+), else PTTL
    ttl_grid: int         # ms: expiries are folded as expire_at // ttl_grid
    db: int = 0
    digest: bool = True  # False: type and expiry only (a census of the keys)
    detail: Detail = NO_DETAIL  # what both sides hold beyond plain values (stream counters, field TTLs)
    slots: Collection[int] | None = None  # only keys in these slots (None: all)
    spill: str | None = None  # also write each key's fold to `<spill>.NN` files (spill.py): bring-back's joins


@dataclass
class ScanTotals:
    """What a worker reports after its scan: its master's per-slot digests and its key count."""

    node: str
    digests: SlotDigests
    keys: int = 0


class _Worker:
    """The scan of one master, inside its own process."""

    def __init__(self, job: ScanJob, pipe: Connection) -> None:
        self.job = job
        self.pipe = pipe
        self.scanned = self.reported = 0

    def scan(self) -> ScanTotals:
        """SCAN, probe, first windows and digests as a pipeline: each round trip carries the windows
        of one batch, the probe of the next and the SCAN after that, and the batch before is
        digested while the server works. So the server and this process are busy at the same time."""
        job = self.job
        wire = Wire(job.endpoint, job.node.host, job.node.port, job.db)
        side = Wire(job.endpoint, job.node.host, job.node.port, job.db)
        reader = DigestReader(wire, job.exact_ttl, digest=job.digest, side=side, detail=job.detail)
        self.digests = SlotDigests(job.node.name)
        self.spill = SpillWriter(job.spill) if job.spill else None
        cursor: bytes | None = b"0"
        probing = windowing = None
        digesting: tuple[Batch, list] | None = None
        while cursor is not None or probing or windowing or digesting:
            payload, counts = [], []
            for batch, stage in ((windowing, reader.windows), (probing, reader.probe)):
                part, count = stage(batch) if batch else (b"", 0)
                payload.append(part)
                counts.append(count)
            if cursor is not None:
                payload.append(pack(b"SCAN", cursor, b"COUNT", b"%d" % SCAN_COUNT))
            wire.send(b"".join(payload))
            if digesting:
                self._add(len(digesting[0].keys), reader.columns(*digesting))
            replies = wire.read(sum(counts) + (cursor is not None))
            digesting = (windowing, replies[:counts[0]]) if windowing else None
            if probing:
                reader.probed(probing, replies[counts[0]:counts[0] + counts[1]])
                if not reader.with_digest:
                    self._add(len(probing.keys), columns_of(probing.keys, reader.census(probing)))
                    probing = None
            windowing, probing = probing, None
            if cursor is not None:
                cursor, keys = replies[-1]
                if job.slots is not None:  # --slots: the other slots' keys are not even read
                    keys = [key for key, slot in zip(keys, key_slots(keys)) if slot in job.slots]
                probing = Batch(keys) if keys else None
                cursor = None if cursor == b"0" else cursor
        wire.close()
        side.close()
        if self.spill is not None:
            self.spill.close()
        self.pipe.send(("progress", self.scanned - self.reported))
        return ScanTotals(job.node.name, self.digests, sum(self.digests.types))

    def _add(self, scanned: int, columns: Columns) -> None:
        """Fold each key into its slot's digest (the hot loop: `fold` inlined, its hashing done in C over the
        batch's columns; per key, only the XOR and the counts are Python steps)."""
        self.scanned += scanned
        if self.scanned - self.reported >= PROGRESS_EVERY:
            self.pipe.send(("progress", self.scanned - self.reported))
            self.reported = self.scanned
        keys, codes, digests, expires = columns
        slots = key_slots(keys)
        wanted = self.job.slots
        if wanted is not None and not all(map(wanted.__contains__, slots)):
            kept = list(map(wanted.__contains__, slots))
            slots, keys, codes, digests, expires = (list(compress(column, kept))
                                                    for column in (slots, keys, codes, digests, expires))
        # NO_EXPIRY (-1) // grid is NO_EXPIRY: the cell of a key without TTL is NO_EXPIRY, as in fold()
        cells = map(floordiv, expires, repeat(self.job.ttl_grid))
        shares = list(map(xxh3, map(bytes.__add__, keys, map(FOLD.pack, codes, digests, cells))))
        if self.spill is not None:  # each key's fold to its bucket's spill too (bring-back's joins, spill.py)
            self.spill.add(map(rshift, slots, repeat(BUCKET_SHIFT)), keys, expires, shares)
        totals, types, with_ttl, width = self.digests.totals, self.digests.types, self.digests.with_ttl, TYPE_COUNT
        for slot, code, expire_at, share in zip(slots, codes, expires, shares):
            totals[slot] ^= share
            types[slot * width + code] += 1
            if expire_at != NO_EXPIRY:
                with_ttl[slot] += 1

def _worker_main(job: ScanJob, pipe: Connection, parent_pid: int | None = None) -> None:
    die_with_parent(parent_pid)  # a killed verify or run must not leave its scans (and their lock fd) behind
    worker = _Worker(job, pipe)

    def work() -> None:
        with translated_errors(job.endpoint):
            totals = worker.scan()
        pipe.send(("done", totals))

    try:
        relay_errors(work, lambda relayed: pipe.send(("error", *relayed)),
                     lambda exc: f"{job.endpoint.role} {job.node.name}: {type(exc).__name__}: {exc}",
                     "rerun verify; if it fails again, report this message")
    finally:
        pipe.close()


def _context():
    """fork, as the data path does: workers start in milliseconds and need no importable __main__
    (spawn and forkserver re-import the caller's script). A worker only touches its own sockets."""
    return multiprocessing.get_context("fork")


class SideScans:
    """The scan workers of a verify (every master of both sides): at most `limit` at once (--workers;
    None: all at once), the next one started as one ends."""

    def __init__(self, jobs: dict[str, list[ScanJob]], limit: int | None = None) -> None:
        self.workers: dict[str, list[tuple[ScanJob, Connection, multiprocessing.Process]]] = {side: [] for side in jobs}
        # both sides in turn, so that each side's masters progress together
        queued = [(side, job) for index in range(max(map(len, jobs.values()), default=0))
                  for side, side_jobs in jobs.items() if index < len(side_jobs) for job in (side_jobs[index],)]
        self._queued = queued
        self._limit = max(1, limit) if limit else len(queued)
        self._running = 0
        while self._queued and self._running < self._limit:
            self._start()

    def _start(self) -> Connection:
        side, job = self._queued.pop(0)
        parent, child = _context().Pipe()
        process = _context().Process(target=_worker_main, args=(job, child, os.getpid()), daemon=True,
                                     name=f"verify-{side}-{job.node.name}")
        process.start()
        child.close()
        self.workers[side].append((job, parent, process))
        self._running += 1
        return parent

    def totals(self, progress=None) -> dict[str, list[ScanTotals]]:
        """Wait for every worker's scan; report progress in keys as they go."""
        pending = {conn: (side, job) for side, workers in self.workers.items() for job, conn, _ in workers}
        done: dict[str, list[ScanTotals]] = {side: [] for side in self.workers}
        while pending:
            for conn in wait(list(pending)):
                side, job = pending[conn]
                message = _receive(conn, job)
                if message[0] == "progress":
                    if progress:
                        progress(message[1])
                else:
                    done[side].append(message[1])
                    del pending[conn]
                    self._running -= 1
                    if self._queued:
                        started = self._start()
                        pending[started] = next((side, job) for side, workers in self.workers.items()
                                                for job, c, _ in workers if c is started)
        return done

    def close(self) -> None:
        for workers in self.workers.values():
            for _, conn, process in workers:
                conn.close()
                process.join(5)
                if process.is_alive():
                    process.kill()
                    process.join()

    def __enter__(self) -> SideScans:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _receive(conn: Connection, job: ScanJob):
    try:
        message = conn.recv()
    except EOFError:
        raise errors.RuntimeFailure(f"the verify worker for {job.endpoint.role} {job.node.name} died",
                                    "rerun verify; if it dies again, check the machine's memory") from None
    if message[0] == "error":
        raise_relayed(message[1:])
    return message
