"""The run dir's dump as verify's reference, so the target can be checked with the source stopped.

Struct records carry the logical value: their chunks are fed straight into the canonical digests.
DUMP records carry an encoded payload, and the only decoder of it that exists everywhere
(ElastiCache Serverless included) is the target itself. So:

1. fast path: DUMP the key on the target and compare the payload bodies (without the 10-byte
   footer, which holds the RDB version and CRC). Equal bodies are equal values.
2. otherwise RESTORE the dumped payload into a scratch key on the target master that owns the
   scratch key's slot, digest it with typed reads like any key, and delete it. The scratch key
   carries a 60 s TTL, so a verify killed half-way leaves nothing behind for long.

Names, types and expiries are compared the same way as source-vs-target: a census worker scans the
target (TYPE + expiry, no values) into per-slot digests, the dump's index is folded the same
way, and only slots that differ are compared key by key (their target keys named by descent.py).
A dump record already expired is not a difference; a key dumped twice (SCAN repeats, resumed dumps)
counts as its last record. The dump's index is held per key (about 100 bytes a key): unlike the
verify against the source, this path is not flat in memory.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from typing import NamedTuple

from ..datapath.segments import DUMP, Record, stream_groups
from ..datapath.store import LocalSegments
from ..errors import BadInput
from ..net.endpoints import Topology, translated_errors
from ..net.keyspace import NO_EXPIRY, SLOT_COUNT, key_slot
from ..net.rdb import payload_body, payload_type
from ..net.wire import ReplyError, pack
from ..rundir import RunDir
from .compare import Pass, compare_views
from .descent import SlotLister
from .digest import DIGEST_TYPE_CODE, new_digest
from .fullscan import ScanJob, SideScans, combined, fold
from .readers import ABSENT, DigestReader, SideReader, View

SCRATCH_PREFIX = b"__redis_migrate_verify__:"
SCRATCH_TTL_MS = 60_000
BATCH = 1000


class Entry(NamedTuple):
    """What the dump says about one key: its type, expiry, and where its last record is."""

    type: str
    expire_at: int
    segment: int
    struct: bool


class StructAssembler:
    """Digests built from struct records, chunk by chunk, never holding a value whole."""

    def __init__(self) -> None:
        self.digests: dict[bytes, object] = {}

    def add(self, record: Record) -> None:
        digest = None if record.first else self.digests.get(record.key)
        if digest is None:
            digest = self.digests[record.key] = new_digest(value_type(record.type), dedupe=True)
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

    def view(self, key: bytes, entry: Entry) -> View:
        digest = self.digests[key]
        return View(entry.type, digest.intdigest(), entry.expire_at, digest.length)

    def discard(self, key: bytes) -> None:
        self.digests.pop(key, None)


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


class DumpReference:
    """Reads the dump once, streaming, and answers for any key what the dump holds."""

    label = "dump"

    def __init__(self, run_dir: RunDir | None, target: Topology, source=None) -> None:
        """`source`: where the segments come from (the run dir's by default, or an S3 archive)."""
        self.run_dir = run_dir
        self.target = target
        self.loaded = False
        self.source = source or LocalSegments(run_dir)
        self.segments = self.source.names()
        if not self.segments:
            raise BadInput(f"{self.source.label} holds no dump segments",
                           "run `redis-migrate dump` (or `run`) first, or verify against the source")
        self.index: dict[bytes, Entry] = {}
        self.structs = StructAssembler()
        self.suspects: set[bytes] = set()
        self.expired = 0
        self.same_payload = 0   # keys settled by the fast path
        self.decoded = 0        # payloads decoded in a scratch key on the target
        self.target_reader = SideReader(target)
        self.views: dict[bytes, View] = {}

    # --- reading the dump ---

    def _load(self, fast_path: bool, progress=None) -> None:
        """Index every key; with `fast_path`, compare DUMP payloads with the target's as it goes."""
        now = int(time.time() * 1000)
        self.loaded = True
        for number, path in enumerate(self.segments):
            batch: list[Record] = []
            records = self._read(path)
            for record in records:
                if record.expire_at != NO_EXPIRY and record.expire_at <= now:
                    self._forget(record.key)
                    self.expired += record.first
                    continue
                if record.kind == DUMP:
                    self._forget(record.key)
                    self.index[record.key] = Entry(payload_type(record.payload), record.expire_at, number, False)
                    batch.append(record)
                else:
                    if record.first or record.key not in self.index:
                        self._forget(record.key)
                        self.index[record.key] = Entry(value_type(record.type), record.expire_at, number, True)
                    self.structs.add(record)
            if fast_path:
                self._compare_payloads(batch)
            if progress:
                progress(sum(r.first for r in records))

    def _read(self, name: str) -> list[Record]:
        return self.source.load(name).records()

    def _forget(self, key: bytes) -> None:
        """A later record of a key replaces everything an earlier one said."""
        self.index.pop(key, None)
        self.structs.discard(key)
        self.suspects.discard(key)

    def _compare_payloads(self, records: list[Record]) -> None:
        """The fast path: the target's own DUMP of each key against the dumped payload."""
        with translated_errors(self.target.endpoint):
            by_key = {record.key: record for record in records}  # a key dumped twice: its last record
            for index, keys in self.target_reader.by_owner(by_key).items():
                wire = self.target_reader.reader(index).wire
                for start in range(0, len(keys), BATCH):
                    chunk = keys[start:start + BATCH]
                    wire.send(b"".join(pack(b"DUMP", key) for key in chunk))
                    for key, payload in zip(chunk, wire.read(len(chunk))):
                        if not isinstance(payload, bytes) or payload_body(payload) != payload_body(by_key[key].payload):
                            self.suspects.add(key)
                        else:
                            self.suspects.discard(key)
                            self.same_payload += 1

    # --- passes ---

    def full_pass(self, tolerance_ms: int, progress=None) -> Pass:
        grid = max(tolerance_ms, 1)
        jobs = {"target": [ScanJob(self.target.endpoint, node, self.target.has_pexpiretime, grid, digest=False)
                           for node in self.target.masters]}
        with SideScans(jobs) as census:
            self._load(fast_path=True, progress=progress)
            done = census.totals(progress)["target"]
        target = combined([result.digests for result in done])
        slots = self._differing_slots(list(target.totals), grid)
        lister = SlotLister(self.target)
        try:
            target_keys = {key for names in lister.keys(slots) for key in names}
        finally:
            lister.close()
        wanted = set(slots)
        in_slots = {key for key in self.index if key_slot(key) in wanted}
        suspects = list(self.suspects | target_keys | in_slots | self._struct_suspects())
        candidates = compare_views(self.read(suspects), self._target_views(suspects), tolerance_ms)
        counts = {"source": self._counts(), "target": target.counts({r.node: r.keys for r in done}),
                  "slots_compared_by_key": len(slots), "dump_expired": self.expired,
                  "dump_same_payload": self.same_payload, "dump_decoded_on_target": self.decoded}
        return Pass(candidates, counts)

    def _differing_slots(self, totals: list[int], grid: int) -> list[int]:
        """The target's census totals against the dump's names, types and expiries, folded alike."""
        for key, entry in self.index.items():
            totals[key_slot(key)] ^= fold(key, DIGEST_TYPE_CODE[entry.type], 0, entry.expire_at, grid)
        return [slot for slot in range(SLOT_COUNT) if totals[slot]]

    def _struct_suspects(self) -> set[bytes]:
        """Struct keys whose assembled digest differs from the target's typed digest."""
        keys = [key for key, entry in self.index.items() if entry.struct]
        target, dumped = self._target_views(keys), self.read(keys)
        return {key for key in keys if dumped[key][:3] != target[key][:3]}

    def _target_views(self, keys) -> dict[bytes, View]:
        with translated_errors(self.target.endpoint):
            return self.target_reader.read(list(keys))

    def _counts(self) -> dict:
        by_type = Counter(entry.type for entry in self.index.values())
        with_ttl = sum(entry.expire_at != NO_EXPIRY for entry in self.index.values())
        return {"keys": len(self.index), "with_ttl": with_ttl, "without_ttl": len(self.index) - with_ttl,
                "by_type": dict(sorted(by_type.items())), "masters": {"dump": len(self.index)}}

    # --- the Reference protocol ---

    def read(self, keys: list[bytes]) -> dict[bytes, View]:
        """What the dump holds for each key (ABSENT where it holds none, or it had expired)."""
        missing = [key for key in keys if key not in self.views]
        dumped = [key for key in missing if key in self.index and not self.index[key].struct]
        decoded = self._decode(self._records(dumped)) if dumped else {}
        for key in missing:
            entry = self.index.get(key)
            if entry is None:
                self.views[key] = ABSENT
            elif entry.struct:
                self.views[key] = self.structs.view(key, entry)
            else:
                self.views[key] = decoded[key]
        return {key: self.views[key] for key in keys}

    def sample(self, count: int) -> list[bytes]:
        if not self.loaded:
            self._load(fast_path=False)
        return random.sample(list(self.index), min(count, len(self.index)))

    def records(self, keys: list[bytes], target_rdb: int) -> list[Record]:
        """Every record of these keys from their last first chunk on, for repair."""
        wanted = set(keys)
        chosen: dict[bytes, list[Record]] = {}
        for path in self.segments:
            for record in self._read(path):
                if record.key in wanted:
                    if record.first:
                        chosen[record.key] = []
                    chosen.setdefault(record.key, []).append(record)
        return [record for key in keys for record in chosen.get(key, [])]

    def close(self) -> None:
        self.target_reader.close()

    # --- decoding DUMP payloads on the target ---

    def _records(self, keys: list[bytes]) -> dict[bytes, Record]:
        """The last DUMP record of each key, reading only the segments that hold them."""
        by_segment: dict[int, set[bytes]] = {}
        for key in keys:
            by_segment.setdefault(self.index[key].segment, set()).add(key)
        found = {}
        for number, wanted in by_segment.items():
            for record in self._read(self.segments[number]):
                if record.key in wanted and record.kind == DUMP:
                    found[record.key] = record
        return found

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

