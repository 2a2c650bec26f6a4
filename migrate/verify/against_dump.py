"""The run dir's dump as verify's reference, so the target can be checked with the source stopped.

Struct records carry the logical value: their chunks are fed straight into the canonical digests.
DUMP records carry an encoded payload, and the only decoder of it that exists everywhere
(ElastiCache Serverless included) is the target itself. So:

1. fast path: DUMP the key on the target and compare the payload bodies (without the 10-byte
   footer, which holds the RDB version and CRC). Equal bodies are equal values.
2. otherwise RESTORE the dumped payload into a scratch key on the target master that owns the
   scratch key's slot, digest it with typed reads like any key, and delete it. The scratch key
   carries a 60 s TTL, so a verify killed half-way leaves nothing behind for long.

The full pass is flat in memory, as the verify against the source is: nothing is kept per key.
The segments are streamed once, one at a time. Each segment's values are compared with the target as
above, batch by batch (a struct key once its last chunk is read); only what differs is kept. Names, types
and expiries are folded into per-slot digests (slotdigest.py) while a census worker scans the target
(TYPE + expiry, no values) into its own; only slots that differ are compared key by key: the
target's keys named by descent.py, the dump's by streaming the segments again for just those slots, in
groups of at most GROUP_KEYS keys.

A dump record already expired is not a difference. A key dumped twice (SCAN repeats, resumed dumps)
counts as its last record, in replay order (segments by master then sequence; in a segment, its
DUMP records, then its struct records): a later record drops what an earlier one found, and the key
folded twice makes its slot differ (the counts are one too high), so descent settles it from the
last record. A key whose last record expired while an earlier one did not is checked on the target
(EXISTS): if the target still holds it, its slot is compared key by key too. The differing keys are read
once more from the dump (the segments streamed for just those keys) before the rounds.
"""

from __future__ import annotations

import os
import random
import time

from xxhash import xxh3_128_intdigest

from ..datapath.segments import DUMP, Record, Segment, stream_groups
from ..datapath.store import LocalSegments
from ..errors import BadInput
from ..net.endpoints import Topology, translated_errors
from ..net.keyspace import NO_EXPIRY, key_slot
from ..net.rdb import OBJECT_TYPES, payload_body, payload_type
from ..net.wire import ReplyError, pack
from ..rundir import RunDir
from .compare import Pass, compare_views
from .descent import SlotLister, groups, recount_group
from .digest import DIGEST_TYPE_CODE, new_digest
from .fullscan import ScanJob, SideScans, combined
from .readers import ABSENT, DigestReader, SideReader, View
from .slotdigest import FOLD, TYPE_COUNT, SlotDigests

SCRATCH_PREFIX = b"__redis_migrate_verify__:"
SCRATCH_TTL_MS = 60_000
BATCH = 1000
# A DUMP payload's first byte (its RDB object type) -> the digest type code it folds with
_PAYLOAD_CODES = bytes(DIGEST_TYPE_CODE[OBJECT_TYPES.get(byte, "other")] for byte in range(256))


class StructAssembler:
    """Digests built from struct records, chunk by chunk, never holding a value whole."""

    def __init__(self) -> None:
        self.digests: dict[bytes, object] = {}
        self.heads: dict[bytes, tuple[str, int]] = {}  # key -> type, expiry (of its first chunk)

    def __contains__(self, key: bytes) -> bool:
        return key in self.digests

    def add(self, record: Record) -> None:
        digest = None if record.first else self.digests.get(record.key)
        if digest is None:
            digest = self.digests[record.key] = new_digest(value_type(record.type), dedupe=True)
            self.heads[record.key] = (value_type(record.type), record.expire_at)
        if record.type == "stream-group":  # [last-generated-id, name, last-delivered-id, ...] (version 2)
            digest.set_last_id(record.items[0])
            for index in range(1, len(record.items), 2):
                digest.add_group(record.items[index], record.items[index + 1])
        elif record.type == "stream-groups":  # counters are left out: the dump's source may not have them
            counters, groups = stream_groups(record.items)
            digest.set_last_id(counters[0])
            for name, last_delivered, _, consumers in groups:
                digest.add_group(name, last_delivered)
                digest.add_consumers(name, consumers)
        elif record.type == "stream-pel":  # [group, id, consumer, delivery time, count, ...]
            items = record.items
            digest.add_pending(items[0], list(zip(items[1::4], items[2::4], items[4::4])))
        elif record.type == "stream-end":
            pass
        elif record.type == "hash-ttl":  # field, value, expiry triples
            digest.update([x for i in range(0, len(record.items), 3) for x in record.items[i:i + 2]])
        elif record.type == "stream":     # [id, field count, field, value, ..., id, ...]
            digest.update(_stream_entries(record.items))
        elif record.type == "string":
            digest.update(record.items[0] if record.items else b"")
        else:
            digest.update(record.items)

    def view(self, key: bytes) -> View:
        digest = self.digests[key]
        type_name, expire_at = self.heads[key]
        return View(type_name, digest.intdigest(), expire_at, digest.length)

    def discard(self, key: bytes) -> None:
        self.digests.pop(key, None)
        self.heads.pop(key, None)


def _stream_entries(items: list[bytes]) -> list:
    """The entries of a stream chunk, without placeholders (0 fields: deleted entries still pending)."""
    entries, pos = [], 0
    while pos < len(items):
        count = int(items[pos + 1])
        if count:
            entries.append((items[pos], items[pos + 2:pos + 2 + 2 * count]))
        pos += 2 + 2 * count
    return entries


def value_type(record_type: str) -> str:
    """The Redis type a struct record's chunks make up."""
    if record_type.startswith("stream"):
        return "stream"
    return "hash" if record_type == "hash-ttl" else record_type


def _expired(expire_at: int, now: int) -> bool:
    return expire_at != NO_EXPIRY and expire_at <= now


class DumpReference:
    """Streams the dump, and answers for any key what the dump holds (its last record)."""

    label = "dump"

    def __init__(self, run_dir: RunDir | None, target: Topology, source=None) -> None:
        """`source`: where the segments come from (the run dir's by default, or an S3 archive)."""
        self.run_dir = run_dir
        self.target = target
        self.source = source or LocalSegments(run_dir)
        self.segments = self.source.names()
        if not self.segments:
            raise BadInput(f"{self.source.label} holds no dump segments",
                           "run `redis-migrate dump` (or `run`) first, or verify against the source")
        self.digests = SlotDigests("dump")
        self.found: dict[bytes, tuple[View, View]] = {}  # keys whose last record so far differs from the target
        self.recheck: set[bytes] = set()  # keys judged at the end, from an exact read of their last record
        self.views: dict[bytes, View] = {}  # the dump's view of the keys read (differing keys only)
        self.open = StructAssembler()      # struct keys whose chunks are still coming
        self.closed: dict[bytes, View] = {}  # struct keys assembled, waiting for their batch's target read
        self.gone_slots: set[int] = set()  # slots holding a key whose last record expired and the target holds
        self.expired = 0
        self.same_payload = 0   # keys settled by the fast path
        self.decoded = 0        # payloads decoded in a scratch key on the target
        self.grid = 1
        self.tolerance_ms = 0
        self.now = 0
        self.target_reader = SideReader(target)

    # --- the full pass ---

    def full_pass(self, tolerance_ms: int, progress=None) -> Pass:
        self.grid, self.tolerance_ms = max(tolerance_ms, 1), tolerance_ms
        jobs = {"target": [ScanJob(self.target.endpoint, node, self.target.has_pexpiretime, self.grid, digest=False)
                           for node in self.target.masters]}
        with SideScans(jobs) as census:
            self._stream(progress)
            done = census.totals(progress)["target"]
        target = combined([result.digests for result in done])
        slots = sorted(set(self.digests.differing(target)) | self.gone_slots)
        self._descend(slots, target)
        keys = list(self.found.keys() | self.recheck)
        candidates = compare_views(self.read(keys), self._target_views(keys), tolerance_ms)
        counts = {"source": self.digests.counts({"dump": sum(self.digests.types)}),
                  "target": target.counts({r.node: r.keys for r in done}),
                  "slots_compared_by_key": len(slots), "dump_expired": self.expired,
                  "dump_same_payload": self.same_payload, "dump_decoded_on_target": self.decoded}
        return Pass(candidates, counts)

    def _stream(self, progress=None) -> None:
        """Every segment once, in replay order: fold names, types and expiries, compare values batch by batch."""
        self.now = int(time.time() * 1000)
        for name in self.segments:
            segment = self._load(name)
            self._dump_records(segment)
            self._struct_records(segment.structs)
            self._flush_closed()
            if progress:
                progress(segment.key_count)
        for key in list(self.open.digests):
            self._close(key)
        self._flush_closed()

    def _load(self, name: str) -> Segment:
        return self.source.load(name)

    def _dump_records(self, segment: Segment) -> None:
        """Fold every live DUMP record (a key twice: twice, so its slot differs), then compare each key's
        last record in the segment with the target."""
        count = segment.dump_count
        if not count:
            return
        keys, expiries, slots = segment.keys_at(range(count)), segment.expiries, segment.slots
        payloads, starts = segment.payloads, segment.payload_starts
        last = dict(zip(keys, range(count)))  # a key twice in the segment: its last record
        self._forget(last)
        digests, grid, now, codes = self.digests, self.grid, self.now, _PAYLOAD_CODES
        totals, types, with_ttl, pack_fold = digests.totals, digests.types, digests.with_ttl, FOLD.pack
        for index, key in enumerate(keys):  # the hot loop: slotdigest.fold inlined, as in fullscan.py
            expire_at, slot, code = expiries[index], slots[index], codes[payloads[starts[index]]]
            if expire_at == NO_EXPIRY:
                totals[slot] ^= xxh3_128_intdigest(key + pack_fold(code, 0, NO_EXPIRY))
            elif expire_at <= now:
                self.expired += 1
                continue
            else:
                totals[slot] ^= xxh3_128_intdigest(key + pack_fold(code, 0, expire_at // grid))
                with_ttl[slot] += 1
            types[slot * TYPE_COUNT + code] += 1
        live = {key: index for key, index in last.items() if not _expired(expiries[index], now)}
        self._check_gone([key for key in last if key not in live])
        ends = segment.payload_ends
        self._compare_payloads({key: Record(key, expiries[index], payloads[starts[index]:ends[index]])
                                for key, index in live.items()})

    def _struct_records(self, records: list[Record]) -> None:
        """Chunks feed their key's digest; a key is compared with the target once its chunks end."""
        gone = []
        for record in records:
            key = record.key
            if _expired(record.expire_at, self.now):
                self._forget((key,))
                if record.first:
                    self.expired += 1
                    gone.append(key)
                continue
            if record.first:
                self._forget((key,))
                for other in [other for other in self.open.digests if other != key]:
                    self._close(other)  # a key's chunks are read one after the other: the other one ended
                self.digests.add(key_slot(key), key, DIGEST_TYPE_CODE[value_type(record.type)], 0,
                                 record.expire_at, self.grid)
            elif key not in self.open:
                self.recheck.add(key)  # a chunk apart from its first: the key is judged from an exact read
                continue
            self.open.add(record)
        self._check_gone(gone)

    def _forget(self, keys) -> None:
        """A later record of a key replaces everything an earlier one found."""
        for state in (self.found, self.views, self.closed):
            if state:
                for key in keys:
                    state.pop(key, None)
        if self.open.digests:
            for key in keys:
                self.open.discard(key)

    def _close(self, key: bytes) -> None:
        self.closed[key] = self.open.view(key)
        self.open.discard(key)
        if len(self.closed) >= BATCH:
            self._flush_closed()

    def _flush_closed(self) -> None:
        if self.closed:
            self._compare(self.closed)
            self.closed = {}

    def _compare(self, dumped: dict[bytes, View]) -> None:
        """Keep the keys whose dumped view differs from the target's (with both views)."""
        for key, pair in compare_views(dumped, self._target_views(list(dumped)), self.tolerance_ms).items():
            self.found[key] = pair
            self.views[key] = pair[0]

    def _compare_payloads(self, records: dict[bytes, Record]) -> None:
        """The fast path: the target's own DUMP of each key against the dumped payload; the others are
        decoded on the target and compared by digest."""
        suspects = {}
        with translated_errors(self.target.endpoint):
            for index, keys in self.target_reader.by_owner(records).items():
                wire = self.target_reader.reader(index).wire
                for start in range(0, len(keys), BATCH):
                    chunk = keys[start:start + BATCH]
                    wire.send(b"".join(pack(b"DUMP", key) for key in chunk))
                    for key, payload in zip(chunk, wire.read(len(chunk))):
                        if isinstance(payload, bytes) and payload_body(payload) == payload_body(records[key].payload):
                            self.same_payload += 1
                        else:
                            suspects[key] = records[key]
        if suspects:
            self._compare(self._decode(suspects))

    def _check_gone(self, keys: list[bytes]) -> None:
        """Keys whose last record expired: not folded, so a target that still holds one after an earlier,
        live record of it would go unseen (the earlier record was folded). The slots of those the target
        holds are compared key by key."""
        if not keys:
            return
        with translated_errors(self.target.endpoint):
            for index, group in self.target_reader.by_owner(keys).items():
                wire = self.target_reader.reader(index).wire
                wire.send(b"".join(pack(b"EXISTS", key) for key in group))
                self.gone_slots.update(key_slot(key) for key, held in zip(group, wire.read(len(group))) if held == 1)

    # --- descent: the slots whose names, types or expiries differ ---

    def _descend(self, slots: list[int], target: SlotDigests) -> None:
        """Each group of differing slots: the dump's keys in them (streamed again) and the target's (named
        by descent.py), compared by type and expiry; the keys that differ are judged at the end."""
        lister, census = SlotLister(self.target), SideReader(self.target, digest=False)
        try:
            for group in groups(slots, (self.digests, target)):
                dumped = self._slot_views(set(group))
                for names in lister.keys(group):
                    dumped.update((key, ABSENT) for key in names if key not in dumped)
                with translated_errors(self.target.endpoint):
                    held = census.read(list(dumped))
                recount_group(self.digests, group, dumped)
                recount_group(target, group, held)
                self.recheck.update(compare_views(dumped, held, self.tolerance_ms))
        finally:
            lister.close()
            census.close()

    def _slot_views(self, wanted: set[int]) -> dict[bytes, View]:
        """Type and expiry of the last record of each dumped key in these slots (ABSENT: it expired)."""
        views: dict[bytes, View] = {}
        now = self.now
        for name in self.segments:
            segment = self._load(name)
            picked = [index for index, slot in enumerate(segment.slots) if slot in wanted]
            for key, expire_at, index in zip(segment.keys_at(picked), segment.expiries_at(picked), picked):
                start = segment.payload_starts[index]
                type_name = payload_type(segment.payloads[start:start + 1])
                views[key] = ABSENT if _expired(expire_at, now) else View(type_name, 0, expire_at, 0)
            for record in segment.structs:
                if key_slot(record.key) not in wanted:
                    continue
                if _expired(record.expire_at, now):
                    views[record.key] = ABSENT
                elif record.first or not views.get(record.key, ABSENT).present:
                    views[record.key] = View(value_type(record.type), 0, record.expire_at, 0)
        return views

    def _target_views(self, keys) -> dict[bytes, View]:
        with translated_errors(self.target.endpoint):
            return self.target_reader.read(list(keys))

    # --- the Reference protocol ---

    def read(self, keys: list[bytes]) -> dict[bytes, View]:
        """What the dump holds for each key (ABSENT where it holds none, or it had expired)."""
        missing = [key for key in keys if key not in self.views]
        if missing:
            self.views.update(self._exact(missing))
        return {key: self.views[key] for key in keys}

    def _exact(self, keys: list[bytes]) -> dict[bytes, View]:
        """Each key's last record, streamed from the segments: DUMP payloads decoded on the target, struct
        chunks digested as they come. Holds only these keys."""
        wanted, now = set(keys), int(time.time() * 1000)
        dumped: dict[bytes, Record] = {}
        structs = StructAssembler()
        views = dict.fromkeys(keys, ABSENT)
        for name in self.segments:
            segment = self._load(name)
            picked = [index for index, key in enumerate(segment.keys_at(range(segment.dump_count))) if key in wanted]
            for record in [*segment.dump_records(picked), *(r for r in segment.structs if r.key in wanted)]:
                if _expired(record.expire_at, now):
                    dumped.pop(record.key, None)
                    structs.discard(record.key)
                elif record.kind == DUMP:
                    dumped[record.key] = record
                    structs.discard(record.key)
                elif record.first or record.key not in dumped:  # a stray chunk does not undo a DUMP record
                    dumped.pop(record.key, None)
                    structs.add(record)
        views.update((key, structs.view(key)) for key in structs.digests)
        if dumped:
            views.update(self._decode(dumped))
        return views

    def sample(self, count: int) -> list[bytes]:
        """About `count` random keys of the dump (a reservoir sample of its live records, streamed)."""
        now, seen, chosen = int(time.time() * 1000), 0, []
        for name in self.segments:
            segment = self._load(name)
            live = [key for key, expire_at in zip(segment.keys_at(range(segment.dump_count)), segment.expiries)
                    if not _expired(expire_at, now)]
            live += [r.key for r in segment.structs if r.first and not _expired(r.expire_at, now)]
            for key in live:
                seen += 1
                if len(chosen) < count:
                    chosen.append(key)
                else:
                    slot = random.randrange(seen)
                    if slot < count:
                        chosen[slot] = key
        return list(dict.fromkeys(chosen))

    def records(self, keys: list[bytes], target_rdb: int) -> list[Record]:
        """Every record of these keys from their last first chunk on, for repair."""
        wanted = set(keys)
        chosen: dict[bytes, list[Record]] = {}
        for name in self.segments:
            for record in self._load(name).records():
                if record.key in wanted:
                    if record.first:
                        chosen[record.key] = []
                    chosen.setdefault(record.key, []).append(record)
        return [record for key in keys for record in chosen.get(key, [])]

    def close(self) -> None:
        self.target_reader.close()

    # --- decoding DUMP payloads on the target ---

    def _decode(self, records: dict[bytes, Record]) -> dict[bytes, View]:
        """RESTORE each payload into a scratch key, digest it with typed reads, delete it."""
        token = b"%d:%d:" % (os.getpid(), random.getrandbits(32))
        scratch = {SCRATCH_PREFIX + token + b"%d" % n: record for n, record in enumerate(records.values())}
        self.decoded += len(scratch)
        views = {}
        with translated_errors(self.target.endpoint):
            for index, names in self.target_reader.by_owner(list(scratch)).items():
                reader: DigestReader = self.target_reader.reader(index)
                for start in range(0, len(names), BATCH):
                    chunk = names[start:start + BATCH]
                    views.update(self._decode_on(reader, {name: scratch[name] for name in chunk}))
        return views

    def _decode_on(self, reader: DigestReader, scratch: dict[bytes, Record]) -> dict[bytes, View]:
        wire = reader.wire
        wire.send(b"".join(pack(b"RESTORE", name, b"%d" % SCRATCH_TTL_MS, record.payload, b"REPLACE")
                           for name, record in scratch.items()))
        refused = [reply for reply in wire.read(len(scratch)) if isinstance(reply, ReplyError)]
        try:
            if refused:
                raise BadInput(f"the target cannot decode the dump's payloads ({refused[0]})",
                               "the dump holds a newer RDB version than the target reads: verify against the "
                               "source (--source) instead of --against-dump")
            views = dict(zip(scratch, reader.read(list(scratch))))
        finally:
            wire.send(b"".join(pack(b"DEL", name) for name in scratch))
            wire.read(len(scratch))
        return {record.key: View(views[name].type, views[name].digest, record.expire_at, views[name].length)
                for name, record in scratch.items()}


