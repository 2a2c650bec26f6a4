"""Follow: apply every changed key to the target, state-based.

Events only say "this key changed". Each key waits once in an ordered set (coalesced: repeated events
keep its first-seen time, which gives the lag); the apply loop takes the oldest keys in batches,
re-reads them on the source with the dump's own batch script (DUMP + absolute expiry; big keys and
payloads newer than the target type by type), and writes them with `RESTORE ... REPLACE ABSTTL`, or DEL
when the key is gone. Since the value written is read after the key's last event, the order of events
does not matter: a DEL cannot overtake a later write of the same key.

Some changes publish no event: XREADGROUP, XACK, XCLAIM and XAUTOCLAIM move a stream's pending entries
lists, consumers and last-delivered IDs, and PFCOUNT writes a HyperLogLog's cached count into its value.
Streams with consumer groups and HyperLogLogs heard with `pfadd` are kept in a watchlist and re-read
every second (and at a drain and at stop).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from ..backoff import Backoff
from ..datapath.reader import DumpOptions, KeyReader, RecordList
from ..datapath.replay import RateLimiter, ReplayOptions, TargetWriter
from ..datapath.segments import DUMP, Record
from ..errors import RuntimeFailure, Unreachable
from ..net.endpoints import Topology
from ..net.keyspace import NO_EXPIRY, SlotRanges, key_slot
from ..net.wire import ReplyError, Wire, pack
from ..rundir import DumpCounts, ReplayCounts
from .capture import PROBE_PREFIX, named
from .gaps import DELETING_EVENTS, GapBook

SOURCE_ERRORS = (OSError, ConnectionError, Unreachable)
KINDS_SCRIPT = b"""
local streams, hlls = {}, {}
for i = 1, #ARGV do
  local kind = redis.call('TYPE', ARGV[i]).ok
  if kind == 'stream' then
    streams[#streams + 1] = ARGV[i]
  elseif kind == 'string' and redis.call('GETRANGE', ARGV[i], 0, 3) == 'HYLL' then
    hlls[#hlls + 1] = ARGV[i]
  end
end
return {streams, hlls}
"""
BATCH_KEYS = 500
DEFAULT_MAX_PENDING = 500_000
WATCH_EVERY_S = 1.0
WATCH_PER_ROUND = 5000
STREAM_RDB_TYPES = (15, 19, 21)  # RDB_TYPE_STREAM_LISTPACKS, _2, _3: a DUMP payload's first byte


def record_digest(records: list[Record]) -> bytes:
    """What was read for one key (DUMP payload and expiry, or its chunks): tells a re-read watched key that
    did not change, and is the cutover's baseline digest of a key written by RESTORE."""
    from .baseline import digest
    first = records[0]
    if first.kind == DUMP and len(records) == 1:
        return digest(first.payload, first.expire_at)
    sha = hashlib.sha1()
    for record in records:
        sha.update(b"%d|%d|" % (record.offset, record.expire_at))
        for item in record.items:
            sha.update(b"%d:" % len(item) + item)
    return sha.digest()


def is_stream(record: Record) -> bool:
    if record.kind == DUMP:
        return bool(record.payload) and record.payload[0] in STREAM_RDB_TYPES
    return record.type in ("stream", "stream-group")


class Pending:
    """Keys changed and not applied yet, oldest first, each with the time it was first heard (thread-safe).

    Bounded: past `bound` keys the set is dropped and `overflowed` is called, so memory stays flat
    under any write rate and the reconcile finds what was dropped."""

    def __init__(self, bound: int, overflowed: Callable[[], None]) -> None:
        self.bound = bound
        self.overflowed = overflowed
        self.keys: OrderedDict[bytes, float] = OrderedDict()
        self.lock = threading.Lock()
        self.in_flight_since: float | None = None

    def add(self, key: bytes, at: float) -> None:
        with self.lock:
            if key in self.keys:
                return
            if len(self.keys) >= self.bound:
                self.keys.clear()
                overflow = True
            else:
                overflow = False
            self.keys[key] = at
        if overflow:
            self.overflowed()

    def add_many(self, keys, at: float) -> None:
        for key in keys:
            self.add(key, at)

    def take(self, count: int) -> list[bytes]:
        with self.lock:
            taken = []
            oldest = None
            while self.keys and len(taken) < count:
                key, at = self.keys.popitem(last=False)
                oldest = at if oldest is None else min(oldest, at)
                taken.append(key)
            self.in_flight_since = oldest
            return taken

    def done(self) -> None:
        with self.lock:
            self.in_flight_since = None

    def __len__(self) -> int:
        return len(self.keys)

    def oldest(self) -> float | None:
        with self.lock:
            times = [t for t in (self.in_flight_since, next(iter(self.keys.values()), None)) if t is not None]
        return min(times) if times else None


class Counters:
    applied = 0
    deleted = 0
    forwarded = 0
    last_event_at: float | None = None


class Engine:
    """Applies changed keys from the source to the target. Runs in one thread (the stage's loop); the
    subscriber threads only call `heard` and `gaps.add`."""

    def __init__(self, source: Topology, target: Topology, db: int, options: ReplayOptions, gaps: GapBook,
                 max_pending: int = DEFAULT_MAX_PENDING, mode: str = "auto", slots: SlotRanges | None = None) -> None:
        self.source = source
        self.slots = slots  # --slots: keys outside the range belong to another sync and are never applied
        self.target = target
        self.db = db
        self.gaps = gaps
        self.counts = Counters()
        self.writer = TargetWriter(target, ReplayOptions(max_ops_per_sec=options.max_ops_per_sec,
                                                         allow_nonempty_target=True,
                                                         retry_seconds=options.retry_seconds))
        self.read_limiter = RateLimiter(options.max_ops_per_sec)
        self.retry_seconds = options.retry_seconds
        self.struct_all = mode == "struct"
        self.pending = Pending(max_pending, lambda: gaps.add("pending set over its bound"))
        self.watched: OrderedDict[bytes, bytes | None] = OrderedDict()  # key -> digest sync last wrote
        self.watch_due = 0.0
        self.probes: dict[bytes, set[bytes]] = {}
        self.probe_lock = threading.Lock()
        self.hyperloglogs: set[bytes] = set()         # keys heard with pfadd, not yet in the watchlist
        self.on_delete: Callable[[int], None] = lambda index: None
        self.touched: set[bytes] | None = None       # keys applied while a reconcile runs (re-read after it)
        self.changed: set[bytes] | None = None       # keys applied since the proof (its open set)
        self.changed_count = 0
        self.after_batch: list[Callable[[list[tuple[bytes, bytes | None]]], None]] = []
        # The seam for cutover: after the flip, forward.attach(engine, run_dir) replaces write_changes
        # (records: list[Record], gone: list[bytes]) -> None, and counts in counts.forwarded / self.conflicts.
        self.write_changes = self.write_target
        self._readers: dict[int, KeyReader] = {}

    # --- what the subscribers hand over -------------------------------------------------------------

    def heard(self, index: int, key: bytes, event: bytes) -> None:
        """One keyspace event (a subscriber thread)."""
        now = time.time()
        if key.startswith(PROBE_PREFIX):
            with self.probe_lock:
                self.probes.setdefault(key, set()).add(event)
            return
        self.counts.last_event_at = now
        if event in DELETING_EVENTS:
            self.on_delete(index)  # any key's: the flush watch weighs the primary's whole DBSIZE
        if self.slots is not None and key_slot(key) not in self.slots:
            return  # another range's key (a rename's two names are two events, each judged on its own slot)
        if event == b"pfadd":  # PFCOUNT later rewrites the HyperLogLog's cached count without an event
            with self.probe_lock:
                self.hyperloglogs.add(key)
        self.pending.add(key, now)

    def probe_seen(self, key: bytes) -> bool:
        """Whether the probe key's expiry was heard: K and the expired class (x) both work."""
        with self.probe_lock:
            return b"expired" in self.probes.get(key, ())

    # --- source readers --------------------------------------------------------------------------------

    def retarget_source(self, source: Topology) -> None:
        """A new slot map or primary: read from the new masters."""
        self.close_readers()
        self.source = source

    def _reader(self, index: int) -> KeyReader:
        if index not in self._readers:
            node = self.source.masters[index]
            wire = named(Wire(self.source.endpoint, node.host, node.port, self.db))
            self._readers[index] = KeyReader(wire, wire, self.source, DumpOptions(
                db=self.db, struct_all=self.struct_all, target_rdb=self.writer.target_rdb))
        return self._readers[index]

    def source_wire(self, index: int) -> Wire:
        return self._reader(index).wire

    def close_readers(self) -> None:
        for reader in self._readers.values():
            reader.wire.close()
        self._readers = {}

    def close(self) -> None:
        self.close_readers()
        self.writer.close()

    # --- applying -----------------------------------------------------------------------------------------

    def apply_pending(self, limit: int | None = None) -> int:
        """Apply batches until the pending set is empty (or `limit` keys were applied); keys applied."""
        total = 0
        while len(self.pending) and (limit is None or total < limit):
            keys = self.pending.take(BATCH_KEYS)
            try:
                self.apply(keys)
            except BaseException:
                self.pending.add_many(keys, time.time())  # not applied: they stay pending
                raise
            finally:
                self.pending.done()
            total += len(keys)
        return total

    def apply(self, keys: list[bytes]) -> None:
        """Re-read these keys on the source, then write or delete each on the target. A watched key (re-read
        every second though it may not have changed) whose value is what sync last wrote is not written again."""
        if not keys:
            return
        records = self.read_source(keys)
        by_key: dict[bytes, list[Record]] = {}
        now_ms = int(time.time() * 1000)
        for record in records:
            by_key.setdefault(record.key, []).append(record)
        live = {key: recs for key, recs in by_key.items()
                if recs[0].expire_at == NO_EXPIRY or recs[0].expire_at > now_ms}
        gone = [key for key in keys if key not in live]
        digests = {key: record_digest(recs) for key, recs in live.items()}
        same = {key for key, found in digests.items() if key in self.watched and self.watched[key] == found}
        self.write_changes([r for key, recs in live.items() if key not in same for r in recs], gone)
        self._watch_streams(live)
        self.forget_gone_streams(gone)
        for key in live.keys() & self.watched.keys():
            self.watched[key] = digests[key]
        recorded = {key: found for key, found in digests.items() if key not in same}
        chunked = [key for key in recorded if live[key][0].kind != DUMP]
        if chunked and self.after_batch:  # written type by type: the baseline holds the target's own DUMP
            recorded.update(self.target_digests(chunked))
        results = [(key, found) for key, found in recorded.items() if found is not None] + [(key, None) for key in gone]
        for hook in self.after_batch:
            hook(results)
        if self.touched is not None:
            self.touched.update(keys)
        if self.changed is not None:
            written = [key for key in keys if key not in same]
            self.changed.update(written)
            self.changed_count += len(written)
            if len(self.changed) > self.pending.bound:  # bounded too: the reconcile proves them instead
                self.changed = set()
                self.gaps.add("keys to re-check over the pending bound")

    def target_digests(self, keys: list[bytes]) -> dict[bytes, bytes | None]:
        """The baseline digest of keys as the target holds them (DUMP + PEXPIRETIME there); None where it
        cannot be read (left out of the baseline: cutover reads it from the target itself)."""
        from .baseline import digest
        found: dict[bytes, bytes | None] = dict.fromkeys(keys)
        by_node: dict[int, list[bytes]] = {}
        for key in keys:
            by_node.setdefault(self.writer.owners[key_slot(key)], []).append(key)
        for index, group in by_node.items():
            try:
                wire = self.writer._wire(index)
                wire.send(b"".join(pack(b"PEXPIRETIME", key) + pack(b"DUMP", key) for key in group))
                replies = wire.read(2 * len(group))
            except (OSError, ConnectionError, Unreachable):
                self.writer._drop(index)
                continue
            for key, expiry, payload in zip(group, replies[0::2], replies[1::2]):
                if isinstance(payload, bytes) and isinstance(expiry, int):
                    found[key] = digest(payload, expiry)
        return found

    def forget_written(self) -> None:
        """Someone else wrote the target (a reconcile's repair): watched keys are written again next time."""
        for key in self.watched:
            self.watched[key] = None

    def read_source(self, keys: list[bytes]) -> list[Record]:
        """The keys as dump records, each read on the master that owns it (vanished keys give none).
        A lost connection (a cut, a restart) is reopened and the read retried, for up to retry_seconds."""
        self.read_limiter.acquire(len(keys))
        backoff = Backoff(self.retry_seconds)
        while True:
            try:
                return self._read_source(keys)
            except SOURCE_ERRORS as exc:
                self.close_readers()
                if backoff.expired():
                    raise RuntimeFailure(f"the source kept failing for {self.retry_seconds:.0f}s while sync read "
                                         f"changed keys ({exc})",
                                         "check the source's health and network path, then rerun sync: it "
                                         "reconciles what it missed") from None
                backoff.wait()

    def _read_source(self, keys: list[bytes]) -> list[Record]:
        owners = self.source.slot_owners()
        by_node: dict[int, list[bytes]] = {}
        for key in keys:
            by_node.setdefault(owners[key_slot(key)], []).append(key)
        records, counts = RecordList(), DumpCounts()
        for index, node_keys in by_node.items():
            if index < 0:
                continue  # no master owns the slot right now: the topology watch reports it
            reader = self._reader(index)
            reader.read(node_keys, counts, records)
            reader.skipped_keys.clear()  # names over 4 KiB: never on the target, nothing to keep
        return list(records)

    def write_target(self, records: list[Record], gone: list[bytes]) -> None:
        """Before the flip: the target follows the source (written like replay; gone keys deleted)."""
        counts = ReplayCounts()
        if records:
            self.writer.write(records, counts)
        keys = len({r.key for r in records})
        self.counts.applied += keys + len(gone)
        if gone:
            self.counts.deleted += self.writer.delete(gone)

    # --- streams whose changes publish no event ------------------------------------------------------------

    def _watch_streams(self, live: dict[bytes, list[Record]]) -> None:
        """Watch the streams with groups, and the HyperLogLogs (PFCOUNT caches its count in the value)."""
        streams = [key for key, recs in live.items() if key not in self.watched and is_stream(recs[0])]
        for key in self.with_groups(streams):
            self.watched[key] = None
        with self.probe_lock:
            counted = [key for key in live if key in self.hyperloglogs]
            self.hyperloglogs.difference_update(live)
        for key in counted:
            self.watched[key] = None

    def with_groups(self, keys: list[bytes]) -> list[bytes]:
        """The streams among these keys that have consumer groups (XINFO STREAM's `groups`)."""
        if not keys:
            return []
        owners = self.source.slot_owners()
        found = []
        for key in keys:
            index = owners[key_slot(key)]
            if index < 0:
                continue
            try:
                wire = self.source_wire(index)
                wire.send(pack(b"XINFO", b"STREAM", key))
                reply = wire.read(1)[0]
            except SOURCE_ERRORS:
                self.close_readers()
                found.append(key)  # cannot tell now: watch it anyway
                continue
            if isinstance(reply, ReplyError) or not isinstance(reply, list):
                continue
            fields = dict(zip(reply[0::2], reply[1::2]))
            if fields.get(b"groups"):
                found.append(key)
        return found

    def discover_streams(self) -> int:
        """Keys that exist now and may change without an event: streams with groups, and HyperLogLogs (one
        SCAN of every master; a script tells each batch's types, or a pipeline where scripts are refused)."""
        found = 0
        for index, node in enumerate(self.source.masters):
            if self.slots is not None and self.source.is_cluster and not self.slots.intersects(node.slots):
                continue
            wire = self.source_wire(index)
            cursor = b"0"
            while True:
                cursor, keys = wire.call(b"SCAN", cursor, b"COUNT", b"1000")
                if self.slots is not None:
                    keys = self.slots.keep(keys)
                streams, hyperloglogs = self._silent_kinds(wire, [k for k in keys if k not in self.watched])
                for key in self.with_groups(streams) + hyperloglogs:
                    self.watched[key] = None
                    found += 1
                if cursor == b"0":
                    break
        return found

    def _silent_kinds(self, wire: Wire, keys: list[bytes]) -> tuple[list[bytes], list[bytes]]:
        """The streams and the HyperLogLogs among these keys."""
        if not keys:
            return [], []
        reply = wire.call(b"EVAL", KINDS_SCRIPT, b"0", *keys, check=False)
        if isinstance(reply, ReplyError):  # scripts refused: TYPE, then the strings' first 4 bytes
            wire.send(b"".join(pack(b"TYPE", key) for key in keys))
            kinds = wire.read(len(keys))
            strings = [key for key, kind in zip(keys, kinds) if kind == b"string"]
            wire.send(b"".join(pack(b"GETRANGE", key, b"0", b"3") for key in strings))
            heads = wire.read(len(strings))
            return ([key for key, kind in zip(keys, kinds) if kind == b"stream"],
                    [key for key, head in zip(strings, heads) if head == b"HYLL"])
        return reply[0], reply[1]

    def watch_tick(self, force: bool = False) -> None:
        """Every second (and when asked: at a drain, at stop), every watched stream is re-read."""
        now = time.monotonic()
        if not force and now < self.watch_due:
            return
        self.watch_due = now + WATCH_EVERY_S
        keys = list(self.watched)
        if not force and len(keys) > WATCH_PER_ROUND:
            keys = keys[:WATCH_PER_ROUND]
            for key in keys:
                self.watched.move_to_end(key)
        self.pending.add_many(keys, time.time())

    def forget_gone_streams(self, keys: list[bytes]) -> None:
        for key in keys:
            self.watched.pop(key, None)
        with self.probe_lock:
            self.hyperloglogs.difference_update(keys)

    # --- the proof's re-checks -------------------------------------------------------------------------------

    def lag_ms(self) -> int:
        oldest = self.pending.oldest()
        return 0 if oldest is None else max(int((time.time() - oldest) * 1000), 0)
