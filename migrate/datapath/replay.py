"""Replay: write dump records into the target, routed by slot to the master that owns each key.

DUMP records become `RESTORE key <abs-ms> payload REPLACE ABSTTL`; struct records become native
commands (chunks of at most 1,000 members). Both are idempotent, so a segment that was started but
not marked done is simply replayed again. A segment is marked done only when every reply is OK.

A segment stores its DUMP records as columns with each key's slot, so they are grouped by node and
sent in runs (`Span`), packed and confirmed without a Python step per key; a run with any reply that
is not OK falls back to the per-record path, which retries, reroutes and reports key by key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import zip_longest
from pathlib import Path
from typing import TypeVar

from ..backoff import Backoff
from ..errors import BadInput, GateRefused, RuntimeFailure, Unreachable
from ..events import Warn, no_warning
from ..net.endpoints import Topology, discover, probe_rdb_version
from ..net.keyspace import NO_EXPIRY, SlotRanges, key_slot
from ..net.rdb import is_module_value
from ..net.wire import ReplyError, Wire, pack, pack_restore
from ..rundir import ReplayCounts, ReplayLedger, ReplayShare, RunDir, RunLedger
from ..workers import default_workers, run_workers
from . import streams, witness
from .segments import DUMP, STRUCT, Indices, Record, Segment, load_segment
from .store import LocalSegments, list_segments, segment_id

T = TypeVar("T")
RETRYABLE = ("TRYAGAIN", "LOADING", "BUSY ", "CLUSTERDOWN", "MASTERDOWN", "MOVED", "ASK ")
STREAM_ALREADY_WRITTEN = "equal or smaller than the target stream top item"
BATCH_RECORDS = 2000
MEMBERS_PER_COMMAND = 1000  # keeps every write under ElastiCache Serverless's 3,999 arguments
MAX_SEGMENT_REWRITES = 10
MAX_LOSS_RESETS = 3


@dataclass(frozen=True)
class ReplayOptions:
    mode: str = "auto"                 # auto | struct (a struct replay needs a struct dump)
    max_ops_per_sec: int | None = None
    allow_nonempty_target: bool = False
    retry_seconds: float = 120.0
    workers: int | None = None         # --workers: source masters' segments replayed at once (None: one per core)


@dataclass(frozen=True)
class TargetAbilities:
    """What the target's engine and version can hold beyond plain values."""

    stream_counters: bool = True   # XSETID ENTRIESADDED/MAXDELETEDID, XGROUP ... ENTRIESREAD (7.0+)
    field_ttl: bool = False        # HPEXPIREAT (Redis 7.4+, Valkey 9+)

    @classmethod
    def of(cls, topology: Topology) -> TargetAbilities:
        return cls(topology.has_stream_counters, topology.has_hash_field_ttl)


FIELD_TTL_UNSUPPORTED = "hash field TTLs not supported by the target (no HEXPIRE)"


class RateLimiter:
    """At most `rate` key writes per second, so the cache's ECPU/s maximum is not hit."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.sent = 0

    def acquire(self, count: int) -> None:
        if not self.rate:
            return
        self.sent += count
        ahead = self.sent / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            time.sleep(ahead)


def struct_commands(record: Record, abilities: TargetAbilities = TargetAbilities()) -> list[tuple[bytes, bool | str]]:
    """Native commands for one struct chunk, each with the error reply it may answer on a replay (True: a stream
    that already has the entry; a string: an error holding it)."""
    key, items, kind = record.key, record.items, record.type
    if kind == "string" and record.first and record.offset == 0:
        commands: list[tuple[bytes, bool | str]] = [(pack(b"SET", key, items[0]), False)]  # SET replaces
    else:
        commands = [(pack(b"DEL", key), False)] if record.first else []
    if kind == "string":
        if not (record.first and record.offset == 0):
            commands.append((pack(b"SETRANGE", key, b"%d" % record.offset, items[0]), False))
    elif kind == "hash":
        commands += _in_parts(b"HSET", key, items, 2)
    elif kind == "hash-ttl":
        commands += _hash_with_field_ttls(key, items)
    elif kind == "set":
        commands += _in_parts(b"SADD", key, items, 1)
    elif kind == "zset":
        pairs = list(items)
        pairs[0::2], pairs[1::2] = items[1::2], items[0::2]
        commands += _in_parts(b"ZADD", key, pairs, 2)
    elif kind == "list":
        if not record.first:  # a chunk replayed twice: cut the list back to where this chunk starts
            commands.append((pack(b"LTRIM", key, b"0", b"%d" % (record.offset - 1)), False))
        commands += _in_parts(b"RPUSH", key, items, 1)
    elif kind == "stream":
        commands += streams.entries_commands(key, items, tolerate=not record.first)
    elif kind == "stream-group":  # written by version 2 dumps
        commands += _stream_groups(key, items)
    elif kind == "stream-groups":
        commands += streams.groups_commands(key, items, abilities.stream_counters)
    elif kind == "stream-pel":
        commands += streams.pel_commands(key, items)
    elif kind == "stream-end":
        commands += streams.end_commands(key, items, abilities.stream_counters)
    elif kind == "delete":  # what was written of a key skipped mid-way
        commands.append((pack(b"DEL", key), False))
    if record.expire_at != NO_EXPIRY and kind != "delete":
        commands.append((pack(b"PEXPIREAT", key, b"%d" % record.expire_at), False))
    return commands


def _in_parts(command: bytes, key: bytes, items: list[bytes], per_member: int) -> list[tuple[bytes, bool]]:
    """One command per MEMBERS_PER_COMMAND members: a compact hash, set or zset is read whole by one
    HSCAN/SSCAN/ZSCAN, and ElastiCache Serverless refuses commands of more than 3,999 arguments."""
    step = MEMBERS_PER_COMMAND * per_member
    if len(items) <= step:
        return [(pack(command, key, *items), False)]
    return [(pack(command, key, *items[start:start + step]), False) for start in range(0, len(items), step)]


def _hash_with_field_ttls(key: bytes, items: list[bytes]) -> list[tuple[bytes, bool]]:
    """HSET the fields, then HPEXPIREAT each expiry's fields (triples: field, value, expiry or -1)."""
    commands = _in_parts(b"HSET", key, [x for i in range(0, len(items), 3) for x in items[i:i + 2]], 2)
    by_expiry: dict[bytes, list[bytes]] = {}
    for name, expiry in zip(items[0::3], items[2::3]):
        if expiry != b"-1":
            by_expiry.setdefault(expiry, []).append(name)
    for expiry, fields in by_expiry.items():
        for start in range(0, len(fields), MEMBERS_PER_COMMAND):
            part = fields[start:start + MEMBERS_PER_COMMAND]
            commands.append((pack(b"HPEXPIREAT", key, expiry, b"FIELDS", b"%d" % len(part), *part), False))
    return commands


def record_commands(records: list[Record], abilities: TargetAbilities = TargetAbilities()
                    ) -> list[list[tuple[bytes, bool | str]]]:
    """Each record's commands: one RESTORE for a DUMP record, native commands for a struct chunk."""
    return [[(pack_restore(r.key, r.expire_at, r.payload), False)] if r.kind == DUMP else struct_commands(r, abilities)
            for r in records]


def _stream_groups(key: bytes, items: list[bytes]) -> list[tuple[bytes, bool]]:
    """Groups with their last-delivered IDs, then the stream's last generated ID (a version 2 dump's record).
    MKSTREAM keeps an emptied stream in existence; a temporary group does the same for one with no groups."""
    commands = [(pack(b"XGROUP", b"CREATE", key, b"__redis_migrate__", b"$", b"MKSTREAM"), False),
                (pack(b"XGROUP", b"DESTROY", key, b"__redis_migrate__"), False)]
    for index in range(1, len(items), 2):
        name, last_delivered = items[index], items[index + 1]
        commands.append((pack(b"XGROUP", b"DESTROY", key, name), False))
        commands.append((pack(b"XGROUP", b"CREATE", key, name, last_delivered), False))
    commands.append((pack(b"XSETID", key, items[0]), False))
    return commands


def _tolerated(reply, tolerate: bool | str) -> bool:
    """Whether an error reply is one a replayed command may answer (see struct_commands)."""
    if tolerate is True:
        return STREAM_ALREADY_WRITTEN in str(reply)
    return bool(tolerate) and tolerate in str(reply)


@dataclass(frozen=True)
class Span:
    """Some of a segment's DUMP records (by index), all owned by one node."""

    node: int
    segment: Segment
    indices: Indices

    def __len__(self) -> int:
        return len(self.indices)

    def packed(self) -> bytes:
        segment, indices = self.segment, self.indices
        return b"".join(map(pack_restore, segment.keys_at(indices), segment.expiries_at(indices),
                            segment.payloads_at(indices)))

    def expired(self, now_ms: int) -> int:
        """Records already expired: RESTORE with a past ABSTTL answers OK and writes nothing."""
        if self.segment.soonest_expiry > now_ms:
            return 0
        expiries = self.segment.expiries_at(self.indices)
        return sum(map(now_ms.__ge__, expiries)) - expiries.count(NO_EXPIRY)

    def records(self) -> list[Record]:
        return self.segment.dump_records(self.indices)


def _records_of(batch: list[Record] | Span) -> list[Record]:
    return batch.records() if isinstance(batch, Span) else batch


@dataclass
class Sent:
    """What one send left in flight: per node, the connection used, the records and their commands."""

    nodes: list[tuple[int, Wire, list[Record] | Span, list | None]] = field(default_factory=list)  # None: RESTOREs
    unsent: list[Record] = field(default_factory=list)


class TargetWriter:
    """Routes records to the owning master and pipelines them; returns only when every reply is OK."""

    def __init__(self, topology: Topology, options: ReplayOptions, target_rdb: int | None = None) -> None:
        self.topology = topology
        self.options = options
        # a replay worker takes its parent's probe: probes at once would race on the scratch key
        self.target_rdb = probe_rdb_version(topology) if target_rdb is None else target_rdb
        self.abilities = TargetAbilities.of(topology)
        self.unheld: set[bytes] = set()  # keys skipped mid-way (hash field TTLs): their later chunks are dropped
        self.limiter = RateLimiter(options.max_ops_per_sec)
        self._route(topology)

    def _route(self, topology: Topology) -> None:
        self.topology = topology
        self.owners = topology.slot_owners()
        self.wires: dict[int, Wire] = {}
        self.disturbed = False  # set when a connection was lost or the slots moved: see replay()

    def _wire(self, index: int) -> Wire:
        if index not in self.wires:
            node = self.topology.masters[index]
            self.wires[index] = Wire(self.topology.endpoint, node.host, node.port)
        return self.wires[index]

    def close(self) -> None:
        for wire in self.wires.values():
            wire.close()

    def renew_old_connections(self) -> None:
        """Between segments, when no reply is outstanding: replace IAM connections near ElastiCache's
        12-hour limit (a planned close, not a lost connection: the segment is not written again)."""
        for index, wire in list(self.wires.items()):
            if wire.renew_due:
                wire.close()
                del self.wires[index]

    def write_segment(self, segment: Segment, counts: ReplayCounts) -> None:
        """The DUMP records in runs per node (interleaved, so every node works), then the struct records."""
        self._pipeline(self._spans(segment), counts)
        self.write(segment.structs, counts)

    def _spans(self, segment: Segment) -> list[Span]:
        """Runs of at most BATCH_RECORDS records per node, taking the nodes in turn."""
        per_node = [[Span(node, segment, indices[at:at + BATCH_RECORDS])
                     for at in range(0, len(indices), BATCH_RECORDS)]
                    for node, indices in segment.groups(self.owners)]
        return [span for turn in zip_longest(*per_node) for span in turn if span is not None]

    def write(self, records: list[Record], counts: ReplayCounts) -> None:
        """Write every live record."""
        live = self._live(records, counts)
        self._pipeline([live[start:start + BATCH_RECORDS] for start in range(0, len(live), BATCH_RECORDS)], counts)

    def _pipeline(self, batches: list[list[Record] | Span], counts: ReplayCounts) -> None:
        """One batch stays in flight while the next is packed and sent, so the target nodes and this
        process work at the same time."""
        in_flight: Sent | None = None
        for batch in batches:
            sent = self._send(batch)
            if in_flight is not None:
                retry = self._collect(in_flight, counts)
                if retry:
                    # Order matters for chunked keys: replay the failed records, then this batch again.
                    self._collect(sent, ReplayCounts())
                    self._write_batch(retry + _records_of(batch), counts)
                    sent = None
            in_flight = sent
        if in_flight is not None:
            retry = self._collect(in_flight, counts)
            if retry:
                self._write_batch(retry, counts)

    def _live(self, records: list[Record], counts: ReplayCounts) -> list[Record]:
        """Records not yet expired; a key already expired is counted, never written."""
        now = int(time.time() * 1000)
        live = []
        for record in records:
            if record.expire_at != NO_EXPIRY and record.expire_at <= now:
                counts.expired += record.first
            elif record.kind == STRUCT and (record.type in _CHECKED or record.key in self.unheld):
                live += self._what_it_can_hold(record, counts)
            else:
                self._check_rdb_version(record.rdb_version)
                live.append(record)
        return live

    def _what_it_can_hold(self, record: Record, counts: ReplayCounts) -> list[Record]:
        """A hash whose fields have TTLs is skipped (named, counted) where the target has none, and whatever of
        it was written is deleted: never its fields without their expiries. Stream counters a target before
        7.0 cannot hold are named as not held."""
        if record.key in self.unheld:
            return []
        if record.type == "hash-ttl" and not self.abilities.field_ttl:
            self.unheld.add(record.key)
            counts.skip(record.key, FIELD_TTL_UNSUPPORTED)
            return [Record(record.key, NO_EXPIRY, kind=STRUCT, type="delete", first=False)]
        if not self.abilities.stream_counters and streams.loses_counters(record.type, record.items):
            counts.not_held_key(record.key, streams.NOT_HELD)
        return [record]

    def _check_rdb_version(self, version: int) -> None:
        if version > self.target_rdb:
            raise BadInput(f"the dump holds RDB version {version} payloads, and the target only "
                           f"accepts up to {self.target_rdb}",
                           "dump again with --mode struct (or use `run`, which probes the target and picks it)")

    def _write_batch(self, records: list[Record], counts: ReplayCounts) -> None:
        """Send and confirm, retrying with backoff until every record is confirmed or time runs out."""
        backoff = Backoff(self.options.retry_seconds)
        pending = records
        while pending:
            pending = self._collect(self._send(pending), counts)
            if pending:
                if backoff.expired():
                    raise RuntimeFailure(f"the target kept failing for {self.options.retry_seconds:.0f}s "
                                         f"({len(pending)} keys not confirmed)",
                                         "check the target's health and network path, then rerun to resume")
                counts.retries += 1
                backoff.wait()

    def _send(self, batch: list[Record] | Span) -> Sent:
        """Pack each node's records and send them without waiting for the replies."""
        sent = Sent()
        for index, part, commands, data in self._packed(batch):
            self.limiter.acquire(len(part))
            try:
                wire = self._wire(index)
                wire.send(data)
                sent.nodes.append((index, wire, part, commands))
            except (OSError, ConnectionError, Unreachable):  # a refused login is not retried: it propagates
                self._drop(index)
                sent.unsent += _records_of(part)
        return sent

    def _packed(self, batch: list[Record] | Span) -> list[tuple[int, list[Record] | Span, list | None, bytes]]:
        """Per node: its part of the batch, its commands (None: one RESTORE per record) and their bytes."""
        if isinstance(batch, Span):
            return [(batch.node, batch, None, batch.packed())]
        by_node: dict[int, list[Record]] = {}
        owners = self.owners
        for record in batch:
            node = owners[key_slot(record.key)]
            if node in by_node:
                by_node[node].append(record)
            else:
                by_node[node] = [record]
        packed = []
        for index, node_records in by_node.items():
            if all(r.kind == DUMP for r in node_records):
                packed.append((index, node_records, None,
                               b"".join([pack_restore(r.key, r.expire_at, r.payload) for r in node_records])))
            else:
                commands = record_commands(node_records, self.abilities)
                packed.append((index, node_records, commands, b"".join(c for cmds in commands for c, _ in cmds)))
        return packed

    def _collect(self, sent: Sent, counts: ReplayCounts) -> list[Record]:
        """Read every node's replies; returns the records to retry (per node, in order)."""
        retry = list(sent.unsent)
        reroute = False
        for index, wire, records, commands in sent.nodes:
            node_retry, moved = self._confirm(index, wire, records, commands, counts)
            retry += node_retry
            reroute = reroute or moved
        if reroute:  # only after every node's replies are read, so no reply is left on a socket
            self._rediscover()
        return retry

    def _rediscover(self) -> None:
        self.close()
        try:
            self._route(discover(self.topology.endpoint))
        except Unreachable:
            self._route(self.topology)  # not reachable yet: keep the old map, the retry finds out
        self.disturbed = True

    def _drop(self, index: int) -> None:
        self.disturbed = True
        wire = self.wires.pop(index, None)
        if wire:
            wire.close()

    def delete(self, keys: list[bytes]) -> int:
        """DEL these keys on the masters that own them (sync: keys gone on the source), retried like writes;
        returns how many existed."""
        return self._retrying("deleting keys", lambda: self._delete(keys))

    def _retrying(self, doing: str, attempt: Callable[[], T]) -> T:
        """`attempt()` again after transient failures (a lost connection, MOVED, LOADING), for as long as
        writes are retried."""
        backoff = Backoff(self.options.retry_seconds)
        while True:
            try:
                return attempt()
            except (OSError, Unreachable, _Retry) as exc:
                if backoff.expired():
                    raise RuntimeFailure(f"the target kept failing for {self.options.retry_seconds:.0f}s "
                                         f"while {doing} ({exc})",
                                         "check the target's health and network path, then rerun to resume") from None
                backoff.wait()

    def _delete(self, keys: list[bytes]) -> int:
        by_node: dict[int, list[bytes]] = {}
        for key in keys:
            by_node.setdefault(self.owners[key_slot(key)], []).append(key)
        deleted = 0
        for index, group in by_node.items():
            self.limiter.acquire(len(group))
            try:
                wire = self._wire(index)
                wire.send(b"".join(pack(b"DEL", key) for key in group))
                replies = wire.read(len(group))
            except (OSError, Unreachable):
                self._drop(index)
                raise
            for reply in replies:
                if isinstance(reply, ReplyError):
                    if str(reply).startswith(("MOVED", "ASK ")):
                        self._rediscover()
                    raise _Retry(str(reply))
                deleted += reply
        return deleted

    def exists(self, keys: list[bytes]) -> list[bool]:
        """Whether each key exists on the target (pipelined EXISTS per node), retried like writes."""
        return self._retrying("checking keys it had confirmed", lambda: self._exists(keys))

    def _exists(self, keys: list[bytes]) -> list[bool]:
        by_node: dict[int, list[int]] = {}
        for position, key in enumerate(keys):
            by_node.setdefault(self.owners[key_slot(key)], []).append(position)
        present = [False] * len(keys)
        for index, positions in by_node.items():
            try:
                wire = self._wire(index)
                wire.send(b"".join(pack(b"EXISTS", keys[p]) for p in positions))
                replies = wire.read(len(positions))
            except (OSError, Unreachable):
                self._drop(index)
                raise
            for position, reply in zip(positions, replies):
                if isinstance(reply, ReplyError):
                    if str(reply).startswith(("MOVED", "ASK ")):
                        self._rediscover()
                    raise _Retry(str(reply))
                present[position] = bool(reply)
        return present

    def _confirm(self, index: int, wire: Wire, part: list[Record] | Span, commands: list | None,
                 counts: ReplayCounts) -> tuple[list[Record], bool]:
        if self.wires.get(index) is not wire:
            return _records_of(part), False  # the connection was dropped after these were sent
        try:
            replies = wire.read_ok(len(part)) if commands is None else wire.read(sum(len(c) for c in commands))
        except (OSError, ConnectionError):
            self._drop(index)
            return _records_of(part), False
        now_ms = int(time.time() * 1000)
        if replies is True:  # the common case: every RESTORE answered OK
            expired = part.expired(now_ms) if isinstance(part, Span) else sum(
                NO_EXPIRY != r.expire_at <= now_ms for r in part)
            counts.expired += expired
            counts.restored += len(part) - expired
            return [], False
        records = _records_of(part)
        if commands is not None and ReplyError not in map(type, replies):  # struct records, every reply fine
            for record in records:
                self._count(record, counts, now_ms)
            return [], False
        commands = commands or record_commands(records, self.abilities)
        pos = 0
        for position, (record, cmds) in enumerate(zip(records, commands)):
            errors = [r for r, (_, tolerate) in zip(replies[pos:pos + len(cmds)], cmds)
                      if isinstance(r, ReplyError) and not _tolerated(r, tolerate)]
            pos += len(cmds)
            if errors and self._must_retry(record, str(errors[0]), counts):
                return records[position:], str(errors[0]).startswith(("MOVED", "ASK "))  # keep chunk order
            if not errors:
                self._count(record, counts, now_ms)
        return [], False

    def _must_retry(self, record: Record, error: str, counts: ReplayCounts) -> bool:
        if error.startswith(RETRYABLE) or "throttl" in error.lower():
            return True
        if record.kind == DUMP:
            self._check_rdb_version(record.rdb_version)  # refused as too new: say how to get past it
        if error.startswith("OOM"):
            raise RuntimeFailure("the target is out of memory: its storage limit was reached",
                                 "raise the cache's DataStorage maximum (or maxmemory), then rerun to resume")
        if record.kind == DUMP and is_module_value(record.payload):
            counts.skip(record.key, "module type not supported by the target")
            return False
        raise RuntimeFailure(f"the target refused key {record.key[:100]!r}: {error}",
                             "see the RUNBOOK's troubleshooting section for this message; rerun resumes")

    @staticmethod
    def _count(record: Record, counts: ReplayCounts, now_ms: int) -> None:
        if record.kind == DUMP and NO_EXPIRY != record.expire_at <= now_ms:
            counts.expired += 1  # sent in a span: RESTORE with a past ABSTTL wrote nothing
        elif record.kind == DUMP:
            counts.restored += 1
        elif record.first and record.type != "delete":
            counts.struct_written += 1


_CHECKED = ("hash-ttl", "stream-groups")


class _Retry(Exception):
    """A transient error reply (LOADING, MOVED...) while checking keys."""


def replay(run_dir: RunDir, topology: Topology, options: ReplayOptions,
           progress: Callable[[int], None] = lambda n: None,
           dump_running: Callable[[], bool] = lambda: False, warn: Warn = no_warning,
           source=None) -> ReplayLedger:
    """Replay every segment not yet done. While `dump_running()` is true, wait for more segments.
    `source` lists and loads the segments: the run dir's (default) or an archive's (cloud/archive.py)."""
    local = source is None  # workers read the run dir's segments; an archive streams through this process
    source = source or LocalSegments(run_dir)
    ledger = ReplayLedger.load(run_dir)
    writer = TargetWriter(topology, options)
    guard = LossGuard(ledger, writer, warn)
    try:
        if not ledger.started:
            _refuse_nonempty_target(run_dir, topology, options)
            ledger.start(writer.target_rdb)
        elif not ledger.finished:
            guard.lost()  # resumed: did the target keep what the last run confirmed?
        if local and not dump_running():
            while _replay_in_workers(run_dir, topology, options, ledger, guard, progress, warn, writer.target_rdb):
                pass  # the target lost confirmed keys: every segment again
        while True:
            running = dump_running()
            todo = [name for name in source.names() if name not in ledger.done]
            for name in todo:
                segment = source.load(name)  # checked whole before any write
                written = _write_segment(writer, segment, ledger, guard, name)
                if written is None:
                    break  # the target lost confirmed keys: start again from the first segment
                ledger.mark_done(name, witness.choose(segment, writer.owners), written)
                progress(segment.key_count)
            if not todo and not running:
                break
            if not todo:
                time.sleep(0.01)
    finally:
        writer.close()
    return ledger


def _replay_in_workers(run_dir: RunDir, topology: Topology, options: ReplayOptions, ledger: ReplayLedger,
                       guard: LossGuard, progress: Callable[[int], None], warn: Warn, target_rdb: int) -> bool:
    """A finished dump's segments, one process per source master (workers.py), each with its own target
    connections; a master's segments stay in order, and masters hold disjoint keys. Only this process writes
    replay.json. --max-ops-per-sec is shared out between the workers. Returns True when the target lost
    confirmed keys: the caller starts again from the first segment. A worker checks only the witnesses it
    knows; the target may have lost another worker's segments after that one ended, so once all are done
    every witness is checked here."""
    by_master: dict[int, list[Path]] = {}
    for path in list_segments(run_dir):
        if path.name not in ledger.done:
            by_master.setdefault(segment_id(path)[0], []).append(path)
    workers = min(options.workers or default_workers(), len(by_master))
    if workers <= 1:
        return False
    rate = options.max_ops_per_sec and max(1, options.max_ops_per_sec // workers)
    shared = replace(options, max_ops_per_sec=rate)
    lost = []

    def work(master: int, send) -> None:
        share = ReplayShare(ledger, lambda part: send(("done", part)))
        writer = TargetWriter(topology, shared, target_rdb)
        own_guard = LossGuard(share, writer, warn)
        try:
            for path in by_master[master]:
                segment = load_segment(path)
                written = _write_segment(writer, segment, share, own_guard, path.name)
                if written is None:
                    send(("lost", master))
                    return
                share.mark_done(path.name, witness.choose(segment, writer.owners), written)
                send(("progress", segment.key_count))
        finally:
            writer.close()

    def receive(message) -> None:
        kind, body = message
        if kind == "progress":
            progress(body)
        elif kind == "done":
            ledger.merge(body)
            ledger.save()
        else:
            lost.append(body)

    run_workers(sorted(by_master), work, receive, workers, "replay")
    if guard.lost():  # every witness, on fresh connections: forgets the done segments, refuses past its limit
        return True
    if lost:  # a worker saw a loss that has no witness here any more: write everything again all the same
        ledger.forget_done()
    return bool(lost)


def _write_segment(writer: TargetWriter, segment: Segment, ledger: ReplayLedger, guard: LossGuard,
                   name: str) -> ReplayCounts | None:
    """Write one segment until every reply is OK with no connection lost on the way; its counts.

    A connection lost mid-segment may mean a node restarted: the keys it confirmed before are then
    gone. So the done segments' witnesses are checked (None: the target lost them), and the whole
    segment is written again, which is idempotent."""
    for _ in range(MAX_SEGMENT_REWRITES):
        counts = ReplayCounts()
        writer.renew_old_connections()
        writer.disturbed = False
        writer.write_segment(segment, counts)
        if not writer.disturbed:
            ledger.counts.add(counts)
            return counts
        ledger.counts.retries += counts.retries
        if guard.lost():
            return None
    raise RuntimeFailure(f"the target's connections kept dropping while segment {name} was written "
                         f"({MAX_SEGMENT_REWRITES} tries)",
                         "check the target's health and network path, then rerun the same command to resume")


class LossGuard:
    """Catches a target that lost keys it had confirmed, through the done segments' witnesses."""

    def __init__(self, ledger: ReplayLedger, writer: TargetWriter, warn: Warn = no_warning) -> None:
        self.ledger = ledger
        self.writer = writer
        self.warn = warn
        self.resets = 0

    def lost(self) -> bool:
        gone = witness.missing(self.ledger.witnesses, self.writer.exists)
        if not gone:
            return False
        self.resets += 1
        if self.resets > MAX_LOSS_RESETS:
            raise RuntimeFailure(f"the target lost keys it had confirmed {self.resets} times in this run "
                                 f"(e.g. {gone[0][:60]!r})",
                                 "check the target's health (restarts, evictions, failovers), then rerun "
                                 "the same command: it writes every segment again")
        self.warn(f"the target lost {len(gone)} keys it had confirmed (e.g. {gone[0][:60]!r}): a node restarted "
                  f"without its data, or failed over? Writing every segment again")
        self.ledger.forget_done()
        return True


def _refuse_nonempty_target(run_dir: RunDir, topology: Topology, options: ReplayOptions) -> None:
    """An empty target, or with --slots an empty range there: the other ranges' runs share the cache."""
    if options.allow_nonempty_target:
        return
    slots = RunLedger.load(run_dir).slots
    if slots is None:
        count, where = topology.key_count(), ""
    else:
        count, where = topology.keys_in(SlotRanges.parse(slots)), f" in slots {slots}"
    if count:
        raise GateRefused(f"the target {topology.endpoint.redacted} already holds {count} keys{where}",
                          "replay into an empty cache, or pass --allow-nonempty-target to merge "
                          "(keys with the same name are overwritten)")
