"""After the flip: forward an old-side change to the new cache by compare-and-set, never over an app's write.

Once the SSM parameters point at the cache, a key that an app wrote there belongs to the cache. Sync keeps
following the old Redis (old tasks still write there during the rolling deploy) and hands each changed key
here. A key read as one DUMP payload (the common case) goes through CAS_SCRIPT, one script per key,
pipelined per target master: compare and write in one atomic step, one round trip per batch (about 10x the
throughput of two round trips per key). A big key read type by type (struct chunks) takes WATCH/MULTI, per
key, on the node that owns its slot (one slot: both work on Serverless):

    WATCH key; DUMP key; PEXPIRETIME key      the target's state now
    differs from the baseline (what sync last wrote there)?
        -> an app wrote it: UNWATCH, record a conflict by name (conflicts.jsonl), write nothing
    MULTI; RESTORE ... REPLACE ABSTTL (or DEL, or the type-by-type chunks); DUMP; PEXPIRETIME; EXEC
        -> EXEC nil: the key changed between the read and the write: look again
        -> the new state's digest becomes the baseline

A key the target dropped by expiry is not an app write. A key absent from the baseline is expected absent
on the target: if it is there, an app created it (conflict). Nothing here deletes a key sync did not put
on the cache, so keys that only the cache has are never touched.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from ..errors import RuntimeFailure
from ..keynames import readable
from ..net.endpoints import Topology, discover, translated_errors
from ..net.keyspace import NO_EXPIRY, key_slot
from ..net.wire import ReplyError, Wire, pack
from ..rundir import RunDir
from .baseline import FORWARD, Baseline, digest, expired
from .protocol import ConflictLog

APPLIED, DELETED, CONFLICT, UNCHANGED = "applied", "deleted", "conflict", "unchanged"
ATTEMPTS = 5  # EXEC refused this often (the key keeps changing on the cache): an app is writing it


@dataclass
class ForwardCounts:
    outcomes: Counter = field(default_factory=Counter)  # per forwarded change: applied, deleted, conflict, unchanged
    conflict_keys: int = 0                               # keys newly found written by an app on the cache

    @property
    def forwarded(self) -> int:
        return self.outcomes[APPLIED] + self.outcomes[DELETED]

    @property
    def conflicts(self) -> int:
        """Keys in conflict (each once), as conflicts.jsonl lists them; `dropped` counts the changes not written."""
        return self.conflict_keys

    @property
    def dropped(self) -> int:
        return self.outcomes[CONFLICT]


class Forwarder:
    """Compare-and-set writes into the cache for one sync process (one connection per target master)."""

    def __init__(self, run_dir: RunDir, target: Topology, baseline: Baseline | None = None) -> None:
        self.run_dir = run_dir
        self.target = target
        self.baseline = baseline or Baseline(run_dir)
        self.conflicts = ConflictLog(run_dir)
        self.counts = ForwardCounts()
        self.owners = target.slot_owners()
        self.wires: dict[int, Wire] = {}
        self.where = "the cache after the flip"  # in conflict reasons; bring-back forwards to the old Redis
        self.log_conflicts = True                 # bring-back's straggler round counts them apart instead

    def apply_dump(self, key: bytes, payload: bytes | None, expire_at: int = NO_EXPIRY) -> str:
        """The old side's state of `key` (its DUMP payload and absolute expiry, or None: gone)."""
        return self.apply_dumps([(key, payload, expire_at)])[0]

    def apply_dumps(self, items: list[tuple[bytes, bytes | None, int]]) -> list[str]:
        """Many keys' states at once: one compare-and-set script per key, pipelined per target master (one round
        trip per batch instead of two per key). Each script compares and writes atomically, like WATCH/MULTI."""
        now = _now_ms()
        items = [(key, None if payload is None or (exp != NO_EXPIRY and exp <= now) else payload, exp)
                 for key, payload, exp in items]
        states = {key: self.baseline.state(key) for key, _, _ in items}
        outcomes: dict[bytes, str] = {key: CONFLICT for key, _, _ in items if states[key][1]}
        by_node: dict[int, list[tuple[bytes, bytes | None, int]]] = {}
        for item in items:
            if item[0] not in outcomes:
                by_node.setdefault(self._owner(item[0]), []).append(item)
        for index, group in by_node.items():
            outcomes.update(self._scripted(index, group, states, now))
        result = [outcomes[key] for key, _, _ in items]
        self.counts.outcomes.update(result)
        return result

    def _scripted(self, index: int, group: list, states: dict, now: int) -> dict[bytes, str]:
        wire = self._node_wire(index)
        wire.send(b"".join(pack(b"EVALSHA", CAS_SHA, b"1", key, *_cas_args(states[key][0], payload, exp, now))
                           for key, payload, exp in group))
        replies = wire.read(len(group))
        if any(isinstance(r, ReplyError) and str(r).startswith("NOSCRIPT") for r in replies):
            wire.send(b"".join(pack(b"EVAL", CAS_SCRIPT, b"1", key, *_cas_args(states[key][0], payload, exp, now))
                               for key, payload, exp in group))
            replies = wire.read(len(group))
        outcomes, recorded = {}, []
        for (key, _, _), reply in zip(group, replies):
            if isinstance(reply, ReplyError):
                raise RuntimeFailure(f"forwarding {readable(key)}: the target refused the write ({reply})",
                                     "the target user needs EVAL, DUMP, PEXPIRETIME, RESTORE and DEL; check the "
                                     "target's health and memory limit")
            code = int(reply[0])
            if code == 0:
                outcomes[key] = self._conflict(key, reply[1] or None)
            elif code == 1:
                recorded.append((key, bytes.fromhex(reply[1].decode()) + _EXPIRY.pack(int(reply[2]))))
                outcomes[key] = APPLIED
            else:
                recorded.append((key, None))
                outcomes[key] = DELETED if code == 2 else UNCHANGED
        self.baseline.record(recorded, origin=FORWARD)
        return outcomes

    def apply(self, key: bytes, records: list | None) -> str:
        """The old side's state of `key` as the data path reads it: Records (one DUMP record, or the type-by-type
        chunks of a big key or an older target), or None / [] when the key is gone."""
        if not records:
            return self.apply_dump(key, None)
        if len(records) == 1 and records[0].payload:
            return self.apply_dump(key, records[0].payload, records[0].expire_at)
        from ..datapath.replay import record_commands
        commands = [command for per_record in record_commands(records) for command, _ in per_record]
        return self._forward(key, commands, gone=False)

    def close(self) -> None:
        for wire in self.wires.values():
            wire.close()
        self.wires = {}

    # --- one key ----------------------------------------------------------------------------------

    def _forward(self, key: bytes, writes: list[bytes], gone: bool) -> str:
        outcome = self._attempts(key, writes, gone)
        self.counts.outcomes[outcome] += 1
        return outcome

    def _attempts(self, key: bytes, writes: list[bytes], gone: bool) -> str:
        expected, known_conflict = self.baseline.state(key)
        if known_conflict:
            return CONFLICT
        for _ in range(ATTEMPTS):
            wire = self._wire(key)
            try:
                outcome = self._attempt(wire, key, writes, gone, expected)
            except (ConnectionError, OSError):  # the WATCH state is lost with the connection: look again
                self._drop(wire)
                continue
            if outcome is not None:
                return outcome
        return self._conflict(key, None)

    def _attempt(self, wire: Wire, key: bytes, writes: list[bytes], gone: bool, expected: bytes | None) -> str | None:
        """One look and, if the target holds what sync last wrote, one transaction; None: look again."""
        current = self._watch(wire, key)
        if not _matches(expected, current):
            wire.call(b"UNWATCH")
            return self._conflict(key, current)
        if gone and current is None:
            wire.call(b"UNWATCH")
            self.baseline.record([(key, None)], origin=FORWARD)
            return UNCHANGED
        written = self._transaction(wire, key, writes)
        if written is False:
            return None
        self.baseline.record([(key, written)], origin=FORWARD)
        return DELETED if gone else APPLIED

    def _watch(self, wire: Wire, key: bytes) -> bytes | None:
        wire.send(pack(b"WATCH", key) + pack(b"DUMP", key) + pack(b"PEXPIRETIME", key))
        watched, payload, expire_at = wire.read(3)
        for reply in (watched, payload, expire_at):
            if isinstance(reply, ReplyError):
                raise RuntimeFailure(f"forwarding {readable(key)}: the target refused WATCH/DUMP ({reply})",
                                     "the target user needs WATCH, MULTI, EXEC, DUMP, PEXPIRETIME and RESTORE")
        return digest(payload, expire_at) if payload is not None else None

    def _transaction(self, wire: Wire, key: bytes, writes: list[bytes]) -> bytes | None | bool:
        """MULTI, the writes, a read of the result, EXEC: the new digest, or False when EXEC was refused."""
        wire.send(pack(b"MULTI") + b"".join(writes) + pack(b"DUMP", key) + pack(b"PEXPIRETIME", key) + pack(b"EXEC"))
        replies = wire.read(len(writes) + 4)
        queued, result = replies[:-1], replies[-1]
        refused = [r for r in [*queued, result] if isinstance(r, ReplyError)]
        if result is None and not refused:
            return False
        refused += [r for r in result or () if isinstance(r, ReplyError)]
        if refused:
            raise RuntimeFailure(f"forwarding {readable(key)}: the target refused the write ({refused[0]})",
                                 "check the target's health and its memory limit; sync reconciles this key again")
        payload, expire_at = result[-2], result[-1]
        return digest(payload, expire_at) if payload is not None else None

    def _conflict(self, key: bytes, current: bytes | None) -> str:
        if self.baseline.mark_conflict(key):
            self.counts.conflict_keys += 1
            if not self.log_conflicts:
                return CONFLICT
            reason = f"{'changed' if current is not None else 'deleted'} on {self.where}"
            self.conflicts.add(key, reason)
        return CONFLICT

    def _drop(self, wire: Wire) -> None:
        wire.close()
        self.wires = {index: w for index, w in self.wires.items() if w is not wire}

    def _owner(self, key: bytes) -> int:
        index = self.owners[key_slot(key)]
        if index < 0:
            self.target = discover(self.target.endpoint)
            self.owners = self.target.slot_owners()
            self.close()
            index = self.owners[key_slot(key)]
        return index

    def _wire(self, key: bytes) -> Wire:
        return self._node_wire(self._owner(key))

    def _node_wire(self, index: int) -> Wire:
        wire = self.wires.get(index)
        if wire is None:
            node = self.target.masters[index]
            with translated_errors(self.target.endpoint):
                wire = self.wires[index] = Wire(self.target.endpoint, node.host, node.port)
        return wire


# The compare-and-set of one key, atomic on the server: the target's digest now (sha1 of the DUMP body and the
# expiry, as baseline.digest makes it) against the baseline's; equal (or absent where the baseline allows it)
# -> RESTORE ... ABSTTL or DEL, and the new digest back. Replies: {0, digest now} conflict, {1, sha1, expiry}
# written, {2} deleted (or written with an expiry already past: RESTORE ... ABSTTL then drops it), {3} already absent.
CAS_SCRIPT = b"""
local key = KEYS[1]
local cur = redis.call('DUMP', key)
local now = ''
if cur then
  now = redis.sha1hex(string.sub(cur, 1, #cur - 10) .. '|' .. redis.call('PEXPIRETIME', key))
end
local ok
if cur then ok = (now == ARGV[1]) else ok = (ARGV[1] == '' or ARGV[2] == '1') end
if not ok then return {0, now} end
if ARGV[3] == '' then
  if not cur then return {3} end
  redis.call('DEL', key)
  return {2}
end
redis.call('RESTORE', key, ARGV[4], ARGV[3], 'REPLACE', 'ABSTTL')
local written = redis.call('DUMP', key)
if not written then return {2} end
local expiry = redis.call('PEXPIRETIME', key)
return {1, redis.sha1hex(string.sub(written, 1, #written - 10) .. '|' .. expiry), expiry}
"""
CAS_SHA = hashlib.sha1(CAS_SCRIPT).hexdigest().encode()
_EXPIRY = struct.Struct(">q")


def _cas_args(expected: bytes | None, payload: bytes | None, expire_at: int, now: int) -> tuple[bytes, ...]:
    """The script's ARGV: the baseline's sha1 (hex, '' absent), whether absence is fine (it expired), the payload
    ('' to delete) and the absolute expiry (0: none)."""
    sha = expected[:20].hex().encode() if expected is not None else b""
    absent_ok = b"1" if expired(expected, now) else b"0"
    ttl = b"0" if payload is None or expire_at < 0 else b"%d" % expire_at
    return sha, absent_ok, payload or b"", ttl


def _matches(expected: bytes | None, current: bytes | None) -> bool:
    """The target holds what sync last wrote (or what it wrote has expired there, which is no app's doing)."""
    if expected == current:
        return True
    return current is None and expired(expected, _now_ms())


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- before the flip: what the cache holds is what sync put there -------------------------------------------

# One key's digest, made on the server (baseline.digest's sha1 and the expiry): a small reply instead of the payload.
DIGEST_SCRIPT = b"""
local p = redis.call('DUMP', KEYS[1])
if not p then return false end
local e = redis.call('PEXPIRETIME', KEYS[1])
return {redis.sha1hex(string.sub(p, 1, #p - 10) .. '|' .. e), e}
"""
DIGEST_SHA = hashlib.sha1(DIGEST_SCRIPT).hexdigest().encode()
FILL_SCAN_COUNT = b"2000"
FILL_FLUSH_ROWS = 20_000


def baseline_from_target(run_dir: RunDir, target: Topology, name: str = "baseline", fresh: bool = False) -> int:
    """Record the cache's own state of every key the baseline does not know (the bulk copy's keys, if sync did not
    record them). Before the flip no app writes there, so each key on the cache is one sync wrote. Keys sync
    records meanwhile keep sync's row (the rows are inserted only where none is). Runs before the fence: a scan of
    the cache, each key's digest made on the server by a one-key script (DUMP + PEXPIRETIME where scripts are
    refused), one round trip per batch with the next SCAN; a second thread writes the rows meanwhile, so that the
    server's digests and sqlite's inserts overlap."""
    added, rows = 0, []
    with Baseline(run_dir, name, fresh) as baseline, translated_errors(target.endpoint), \
            ThreadPoolExecutor(1, thread_name_prefix="baseline-rows") as inserter:
        inserting: Future | None = None
        for node in target.masters:
            wire = Wire(target.endpoint, node.host, node.port)
            try:
                for batch in _digested(wire):
                    rows += batch
                    if len(rows) >= FILL_FLUSH_ROWS:
                        added += inserting.result() if inserting else 0
                        inserting, rows = inserter.submit(baseline.record_missing, rows), []
            finally:
                wire.close()
        added += inserting.result() if inserting else 0
        return added + (baseline.record_missing(rows) if rows else 0)


def _digested(wire: Wire) -> Iterator[list[tuple[bytes, bytes]]]:
    """(key, digest) of every key of one node, a SCAN batch at a time (keys gone meanwhile left out)."""
    scripted, (cursor, keys) = True, wire.call(b"SCAN", b"0", b"COUNT", FILL_SCAN_COUNT)
    while True:
        scan = pack(b"SCAN", cursor, b"COUNT", FILL_SCAN_COUNT) if cursor != b"0" else b""
        if not keys and not scan:
            return
        found, scripted, following = _digests(wire, keys, scripted, scan)
        yield [(key, value) for key, value in zip(keys, found) if value is not None]
        if following is None:
            return
        cursor, keys = following


def _digests(wire: Wire, keys: list[bytes], scripted: bool, scan: bytes) -> tuple[list, bool, list | None]:
    """The keys' digests (None: gone), whether scripts still work, and the reply of `scan` (the next SCAN, sent in
    the same round trip; None when there is none)."""
    if scripted:
        found, following = _by_script(wire, keys, scan)
        if found is not None:
            return found, True, following
        return _by_dump(wire, keys, b"")[0], False, following  # scripts are refused here: DUMP from now on
    found, following = _by_dump(wire, keys, scan)
    return found, False, following


def _by_script(wire: Wire, keys: list[bytes], scan: bytes) -> tuple[list | None, list | None]:
    """Digests made on the server (None where scripts are refused), and the reply of `scan`."""
    wire.send(b"".join(pack(b"EVALSHA", DIGEST_SHA, b"1", key) for key in keys) + scan)
    replies = wire.read(len(keys) + bool(scan))
    following = replies.pop() if scan else None
    if any(isinstance(r, ReplyError) and str(r).startswith("NOSCRIPT") for r in replies):
        wire.send(b"".join(pack(b"EVAL", DIGEST_SCRIPT, b"1", key) for key in keys))
        replies = wire.read(len(keys))
    if any(isinstance(r, ReplyError) for r in replies):
        return None, following
    return [None if reply is None else bytes.fromhex(reply[0].decode()) + _EXPIRY.pack(int(reply[1]))
            for reply in replies], following


def _by_dump(wire: Wire, keys: list[bytes], scan: bytes) -> tuple[list, list | None]:
    """Digests of DUMP + PEXPIRETIME made here, and the reply of `scan`."""
    wire.send(b"".join(pack(b"DUMP", k) + pack(b"PEXPIRETIME", k) for k in keys) + scan)
    replies = wire.read(2 * len(keys) + bool(scan))
    following = replies.pop() if scan else None
    return [None if replies[2 * i] is None or isinstance(replies[2 * i], ReplyError)
            else digest(replies[2 * i], replies[2 * i + 1]) for i in range(len(keys))], following


def forward_records(forwarder: Forwarder, records: list, gone: list[bytes]) -> dict[bytes, str]:
    """Records as the data path reads them (one DUMP record per key, or a big key's struct chunks) and keys gone:
    the DUMP ones in pipelined batches, the chunked ones key by key. The outcome per key."""
    by_key: dict[bytes, list] = {}
    for record in records:
        by_key.setdefault(record.key, []).append(record)
    dumps = [(key, chunks[0].payload, chunks[0].expire_at) for key, chunks in by_key.items()
             if len(chunks) == 1 and chunks[0].payload]
    dumps += [(key, None, NO_EXPIRY) for key in gone]
    outcomes: dict[bytes, str] = {}
    for start in range(0, len(dumps), 500):
        batch = dumps[start:start + 500]
        outcomes.update(zip([key for key, _, _ in batch], forwarder.apply_dumps(batch)))
    outcomes.update({key: forwarder.apply(key, chunks) for key, chunks in by_key.items()
                     if not (len(chunks) == 1 and chunks[0].payload)})
    return outcomes


# --- the seam in sync's follow engine -------------------------------------------------------------------

def attach(engine, run_dir: RunDir) -> Forwarder:
    """After the flip, sync's engine writes every change through compare-and-set: its `write_changes(records,
    gone)` is replaced, and its counters (applied, deleted, forwarded, conflicts) kept up to date."""
    forwarder = Forwarder(run_dir, engine.target)

    def write_changes(records: list, gone: list[bytes]) -> None:
        outcomes = list(forward_records(forwarder, records, gone).values())
        engine.counts.applied += len(outcomes)
        engine.counts.deleted += outcomes.count(DELETED)
        engine.counts.forwarded = forwarder.counts.forwarded
        engine.conflicts = forwarder.counts.conflicts

    engine.write_changes = write_changes
    engine.forwarder = forwarder
    return forwarder
