"""Full scans of one side, one worker process per master, folded into per-slot totals.

Why processes: digesting is Python work, and the two sides (and each master of a cluster) are
read at the same time, so each master gets its own process and both cores are used.

Each worker SCANs its master with a large COUNT, reads every key with a DigestReader and folds
xxh3_128(key, type, digest, expiry) into the XOR total of the key's slot. It keeps a compact
entry per key (packed in a bytearray per slot), so that where the two sides' totals differ the
parent can ask for the keys of just those slots. SCAN may return a key twice: XOR then cancels
it, the slot's total differs from the other side's, and the key-by-key comparison (which
deduplicates) settles it; the parent also takes the duplicate out of the counts.

Expiries are folded on a grid as wide as the TTL tolerance (expire_at // tolerance): two expiries
in different cells may differ by more than the tolerance, so the slot is compared key by key; two
in the same cell differ by less, which is no difference. Exact copies (PEXPIRETIME on both sides,
RESTORE ... ABSTTL) land in the same cell; PTTL-derived expiries (Redis < 7) jitter by a few ms,
so only the rare key next to a cell border makes its slot be compared key by key.
"""

from __future__ import annotations

import multiprocessing
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

from xxhash import xxh3_128_intdigest

from .. import errors
from ..children import die_with_parent, raise_relayed, relay_errors
from ..net.endpoints import Endpoint, Node, translated_errors
from ..net.keyspace import NO_EXPIRY, SLOT_COUNT, key_slot
from ..net.wire import Wire, pack
from .digest import DIGEST_TYPE_CODE, DIGEST_TYPES
from .readers import NO_DETAIL, Batch, Detail, DigestReader, View

SCAN_COUNT = 1000
PROGRESS_EVERY = 20_000
_ENTRY = struct.Struct("<BQqI")  # type code, digest, expire_at, key length; the key follows
_FOLD = struct.Struct("<BQq")


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


@dataclass
class ScanTotals:
    """What a worker reports after its scan: per-slot XOR totals and counts."""

    node: str
    totals: list[int]
    keys: int = 0
    with_ttl: int = 0
    by_type: Counter = field(default_factory=Counter)


def fold(key: bytes, code: int, digest: int, expire_at: int, ttl_grid: int) -> int:
    """A key's share of its slot's XOR total: name, type code, digest and expiry cell."""
    cell = NO_EXPIRY if expire_at == NO_EXPIRY else expire_at // ttl_grid
    return xxh3_128_intdigest(key + _FOLD.pack(code, digest, cell))


def combined(results: list[ScanTotals]) -> list[int]:
    """One side's per-slot totals, over all of its masters."""
    totals = [0] * SLOT_COUNT
    for result in results:
        totals = [a ^ b for a, b in zip(totals, result.totals)]
    return totals


def unpack_entries(buffer: bytes) -> list[tuple[bytes, View]]:
    entries, pos, size = [], 0, _ENTRY.size
    while pos < len(buffer):
        code, digest, expire_at, key_len = _ENTRY.unpack_from(buffer, pos)
        pos += size
        entries.append((bytes(buffer[pos:pos + key_len]), View(DIGEST_TYPES[code], digest, expire_at, 0)))
        pos += key_len
    return entries


class _Worker:
    """The scan of one master, inside its own process."""

    def __init__(self, job: ScanJob, pipe: Connection) -> None:
        self.job = job
        self.pipe = pipe
        self.entries: dict[int, bytearray] = {}
        self.scanned = self.reported = 0

    def scan(self) -> ScanTotals:
        """SCAN, probe, first windows and digests as a pipeline: each round trip carries the windows
        of one batch, the probe of the next and the SCAN after that, and the batch before is
        digested while the server works. So the server and this process are busy at the same time."""
        job = self.job
        wire = Wire(job.endpoint, job.node.host, job.node.port, job.db)
        side = Wire(job.endpoint, job.node.host, job.node.port, job.db)
        reader = DigestReader(wire, job.exact_ttl, digest=job.digest, side=side, detail=job.detail)
        self.result = ScanTotals(job.node.name, [0] * SLOT_COUNT)
        self.type_counts = [0] * len(DIGEST_TYPES)
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
                self._add(digesting[0].keys, reader.views(*digesting))
            replies = wire.read(sum(counts) + (cursor is not None))
            digesting = (windowing, replies[:counts[0]]) if windowing else None
            if probing:
                reader.probed(probing, replies[counts[0]:counts[0] + counts[1]])
                if not reader.with_digest:
                    self._add(probing.keys, reader.census(probing))
                    probing = None
            windowing, probing = probing, None
            if cursor is not None:
                cursor, keys = replies[-1]
                probing = Batch(keys)
                cursor = None if cursor == b"0" else cursor
        wire.close()
        side.close()
        self.pipe.send(("progress", self.scanned - self.reported))
        result = self.result
        result.by_type = Counter({DIGEST_TYPES[code]: n for code, n in enumerate(self.type_counts) if n})
        result.keys = sum(self.type_counts)
        return result

    def _add(self, keys: list[bytes], views: list[View]) -> None:
        """Fold each key into its slot's total and keep its entry (the hot loop: locals only)."""
        self.scanned += len(keys)
        if self.scanned - self.reported >= PROGRESS_EVERY:
            self.pipe.send(("progress", self.scanned - self.reported))
            self.reported = self.scanned
        totals, entries, type_counts = self.result.totals, self.entries, self.type_counts
        ttl_grid, pack_entry, codes = self.job.ttl_grid, _ENTRY.pack, DIGEST_TYPE_CODE
        with_ttl = 0
        for key, (type_name, digest, expire_at, _) in zip(keys, views):
            if type_name == "none":
                continue
            slot = key_slot(key)
            code = codes[type_name]
            with_ttl += expire_at != NO_EXPIRY
            totals[slot] ^= fold(key, code, digest, expire_at, ttl_grid)
            buffer = entries.get(slot)
            if buffer is None:
                buffer = entries[slot] = bytearray()
            buffer += pack_entry(code, digest, expire_at, len(key))
            buffer += key
            type_counts[code] += 1
        self.result.with_ttl += with_ttl

    def serve(self) -> None:
        """Answer requests for the entries of given slots until told to stop."""
        while True:
            request = self.pipe.recv()
            if request[0] == "stop":
                return
            slots = request[1]
            self.pipe.send(("entries", {slot: bytes(self.entries[slot]) for slot in slots if slot in self.entries}))


def _worker_main(job: ScanJob, pipe: Connection, parent_pid: int | None = None) -> None:
    die_with_parent(parent_pid)  # a killed verify or run must not leave its scans (and their lock fd) behind
    worker = _Worker(job, pipe)

    def work() -> None:
        with translated_errors(job.endpoint):
            totals = worker.scan()
        pipe.send(("done", totals))
        worker.serve()

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
    """All the scan workers of a verify (every master of both sides), run concurrently."""

    def __init__(self, jobs: dict[str, list[ScanJob]]) -> None:
        ctx = _context()
        self.workers: dict[str, list[tuple[ScanJob, Connection, multiprocessing.Process]]] = {}
        for side, side_jobs in jobs.items():
            self.workers[side] = []
            for job in side_jobs:
                parent, child = ctx.Pipe()
                process = ctx.Process(target=_worker_main, args=(job, child, os.getpid()), daemon=True,
                                      name=f"verify-{side}-{job.node.name}")
                process.start()
                child.close()
                self.workers[side].append((job, parent, process))

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
        return done

    def entries(self, side: str, slots: list[int]) -> list[list[tuple[bytes, View]]]:
        """The entries of the given slots, one list per worker of the side."""
        result = []
        for _job, conn, _ in self.workers[side]:
            conn.send(("entries", slots))
        for job, conn, _ in self.workers[side]:
            buffers = _receive(conn, job)[1]
            result.append([entry for slot in slots if slot in buffers for entry in unpack_entries(buffers[slot])])
        return result

    def close(self) -> None:
        for workers in self.workers.values():
            for _, conn, process in workers:
                try:
                    conn.send(("stop",))
                except OSError:
                    pass
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
