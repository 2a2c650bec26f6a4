"""The source reader: reads keys from one source node into records (DUMP payloads or struct chunks).

Per batch of scanned keys: one script reads every key's absolute expiry, then its size (MEMORY USAGE),
and DUMPs the small keys, up to a budget of bytes per script (--batch-bytes). The keys it leaves (a big
value, or past the budget) are DUMPed one key per command, outside any script, in pipelined rounds of
at most that budget: the server serves its other clients between rounds, and the bytes in flight stay
bounded on both sides. Where scripts or MEMORY are refused (ElastiCache Serverless as a source), the
same reads go in plain pipelines, with sizes estimated from the types' lengths. Keys over
--max-payload, keys whose payload the target cannot RESTORE (a newer RDB version than the target's)
and every key in struct mode are read type by type in chunks instead
(HSCAN/SSCAN/ZSCAN/LRANGE/GETRANGE/XRANGE), so memory stays bounded.

The dump stage (dump.py) drives it batch by batch; verify's repair reads a few named keys with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from typing import Protocol

from ..batches import budgeted
from ..net.endpoints import Topology
from ..net.keyspace import GONE, LENGTH_COMMANDS, SlotRanges, absolute_expiry, estimated_size, key_slot
from ..net.rdb import rdb_version_of
from ..net.wire import ReplyError, Wire, pack
from ..rundir import DumpCounts
from .segments import STRUCT, Record
from .streams import read_stream

DEFAULT_MAX_PAYLOAD = 64 << 20
DEFAULT_BATCH_BYTES = 4 << 20
SCRIPT_VALUE_SHARE = 16  # the script DUMPs only values up to 1/16 of the batch budget (256 KiB by default)
CHUNK_ITEMS = 1000
STRING_CHUNK = 4 << 20
MAX_KEY_BYTES = 4096


# One round trip per batch: expiry, size and (for small keys, up to a budget of bytes) the DUMP
# payload, read by the server itself. The client then parses one nested reply in C (hiredis) instead
# of three per key. A key left undumped comes back with its size in place of its payload: the client
# DUMPs it outside the script (or reads it type by type), so no script runs long or replies big.
# Every expiry is read before any DUMP: PTTL counts down while a script runs (the clock of PTTL is not
# frozen in scripts), so PTTLs read after the DUMPs would make copies expire early.
# The last element says whether every key was plain (there, dumped, and within the target's RDB
# version): then the client stores the batch as it is, with no Python step per key.
# _EXPIRIES is that first part, shared by both batch scripts (READ_SCRIPT and STRUCT_SCRIPT).
_EXPIRIES = b"""
local expiries = {}
if has_pexpiretime then
  for i = first, #argv do
    expiries[i] = call('PEXPIRETIME', argv[i])
  end
else
  local now = call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  for i = first, #argv do
    local ttl = call('PTTL', argv[i])
    if ttl >= 0 then ttl = now_ms + ttl end
    expiries[i] = ttl
  end
end
"""

READ_SCRIPT = b"""
local call = redis.call
local value_max = tonumber(ARGV[1])
local budget = tonumber(ARGV[2])
local has_pexpiretime = ARGV[3] == '1'
local target_rdb = tonumber(ARGV[4])
local argv = ARGV
local first = 5
""" + _EXPIRIES + b"""local out = {}
local n = 0
local used = 0
local plain = 1
for i = first, #argv do
  local key = argv[i]
  local expiry = expiries[i]
  out[n + 1] = expiry
  n = n + 2
  if expiry == -2 then
    out[n] = false
    plain = 0
  else
    local size = call('MEMORY', 'USAGE', key)
    if size and size <= value_max and used + size <= budget then
      used = used + size
      local payload = call('DUMP', key)
      out[n] = payload
      if not payload then
        plain = 0
      elseif target_rdb > 0 and string.byte(payload, -10) + 256 * string.byte(payload, -9) > target_rdb then
        -- the RDB version: the first 2 bytes (little-endian) of the footer (net/rdb.py, FOOTER_BYTES)
        plain = 0
      end
    else
      out[n] = size
      plain = 0
    end
  end
end
out[n + 1] = plain
return out
"""
# Redis 7+ and Valkey: the same script declared read-only (a shebang with flags), so that a CLIENT PAUSE WRITE
# (the live cutover's fence) does not block it as it blocks every undeclared script; it reads keys of any slot.
READ_ONLY_SHEBANG = b"#!lua flags=no-writes,allow-cross-slot-keys\n"
READ_SCRIPT_NO_WRITES = READ_ONLY_SHEBANG + READ_SCRIPT.lstrip(b"\n")


# Type by type, one round trip per batch: every key's expiry (all read first, as above), its type and, for a
# small value (at most max_items members, value_max bytes, within the batch's budget of bytes), its whole
# content: GET, LRANGE, SMEMBERS, ZRANGE WITHSCORES or HGETALL, with the fields' expiries (HPEXPIRETIME)
# where the source has field TTLs. A big value, a stream or a module type comes back without content (nil):
# the client reads it key by key, in chunks.
STRUCT_SCRIPT = b"""
local call = redis.call
local max_items = tonumber(ARGV[1])
local value_max = tonumber(ARGV[2])
local budget = tonumber(ARGV[3])
local has_pexpiretime = ARGV[4] == '1'
local field_ttl = ARGV[5] == '1'
local argv = ARGV
local first = 6
""" + _EXPIRIES + b"""local lengths = {list = 'LLEN', set = 'SCARD', zset = 'ZCARD', hash = 'HLEN'}
local out = {}
local n = 0
local used = 0
for i = first, #argv do
  local key = argv[i]
  local kind = call('TYPE', key)['ok']
  local value = false
  local ttls = false
  if expiries[i] ~= -2 and kind ~= 'none' and kind ~= 'stream' and (kind == 'string' or lengths[kind]) then
    local size = call('MEMORY', 'USAGE', key)
    if size and size <= value_max and used + size <= budget
       and (kind == 'string' or call(lengths[kind], key) <= max_items) then
      used = used + size
      if kind == 'string' then
        value = call('GET', key)
      elseif kind == 'list' then
        value = call('LRANGE', key, 0, -1)
      elseif kind == 'set' then
        value = call('SMEMBERS', key)
      elseif kind == 'zset' then
        value = call('ZRANGE', key, 0, -1, 'WITHSCORES')
      else
        value = call('HGETALL', key)
        if field_ttl then
          local fields = {}
          for j = 1, #value, 2 do fields[#fields + 1] = value[j] end
          ttls = call('HPEXPIRETIME', key, 'FIELDS', #fields, unpack(fields))
        end
      end
    end
  end
  out[n + 1] = expiries[i]
  out[n + 2] = kind
  out[n + 3] = value
  out[n + 4] = ttls
  n = n + 4
end
return out
"""


STRUCT_SCRIPT_NO_WRITES = READ_ONLY_SHEBANG + STRUCT_SCRIPT.lstrip(b"\n")


@dataclass(frozen=True)
class DumpOptions:
    db: int = 0
    match: str | None = None
    types: tuple[str, ...] = ()
    scan_count: int = 1000
    max_payload: int = DEFAULT_MAX_PAYLOAD
    batch_bytes: int = DEFAULT_BATCH_BYTES  # sizes (MEMORY USAGE) DUMPed per script or per round of DUMPs
    struct_all: bool = False          # --mode struct: read every key type by type
    target_rdb: int | None = None     # payloads newer than this are read as struct records
    slots: SlotRanges | None = None   # --slots: only keys in these hash slots (None: all)
    workers: int | None = None        # --workers: masters dumped at once, a process each (None: one per core)
    segment_records: int | None = None  # --segment-records: records per segment (None: the dump's own, or the default)

    def fingerprint(self) -> dict:
        """What a resumed dump must agree on: the same db and the same key selection."""
        printed = {"db": self.db, "match": self.match, "types": sorted(self.types), "struct_all": self.struct_all,
                   "target_rdb": self.target_rdb}
        if self.slots is not None:
            printed["slots"] = str(self.slots)  # absent without --slots: older run dirs still resume
        return printed


class RecordSink(Protocol):
    """Where read records go: a segment being written, or a plain list (repair)."""

    def add(self, record: Record) -> None: ...  # one struct chunk

    def add_dumps(self, keys: list[bytes], expiries: list[int], payloads: list[bytes]) -> None: ...


class RecordList(list):
    """A RecordSink that keeps the records in memory, for a handful of keys."""

    def add(self, record: Record) -> None:
        self.append(record)

    def add_dumps(self, keys: list[bytes], expiries: list[int], payloads: list[bytes]) -> None:
        self.extend(map(Record, keys, expiries, payloads))


class KeyReader:
    """Reads keys from one source node into records: DUMP payloads or struct chunks.

    The batch script runs on its own connection (`bulk`) so that one batch can be in flight on the
    server while the client stores the previous one; struct reads and fallbacks use `wire`.
    """

    def __init__(self, wire: Wire, bulk: Wire, topology: Topology, options: DumpOptions) -> None:
        self.wire = wire
        self.bulk = bulk
        self.options = options
        self.has_pexpiretime = topology.has_pexpiretime
        self.has_memory_usage = True
        self.field_ttl = topology.has_hash_field_ttl  # hash fields may carry their own TTLs: read them too
        source_rdb = topology.expected_rdb_version
        # Every key goes type by type: read small ones whole in the struct batch script, not DUMPed first.
        self.struct_batches = options.struct_all or bool(
            options.target_rdb is not None and source_rdb and source_rdb > options.target_rdb)
        self.use_script = True
        declared = topology.version_tuple >= (7, 0)  # scripts declared read-only run under a CLIENT PAUSE WRITE
        self.script = READ_SCRIPT_NO_WRITES if declared else READ_SCRIPT
        self.struct_script = STRUCT_SCRIPT_NO_WRITES if declared else STRUCT_SCRIPT
        self.skipped_keys: list[tuple[bytes, str]] = []

    def read(self, keys: list[bytes], counts: DumpCounts, sink: RecordSink) -> None:
        """Records for these keys. Vanished and skipped keys are counted, never dropped silently."""
        self.finish(keys, self.start(keys), counts, sink)

    def start(self, keys: list[bytes]) -> bool:
        """Send the batch script for these keys without waiting; True if it is in flight."""
        admissible = _admissible_names(keys)
        if not (self.use_script and admissible):
            return False
        if self.struct_batches:
            self.bulk.send(pack(b"EVAL", self.struct_script, b"0", b"%d" % CHUNK_ITEMS,
                                b"%d" % min(self.options.batch_bytes // SCRIPT_VALUE_SHARE, STRING_CHUNK),
                                b"%d" % self.options.batch_bytes, b"1" if self.has_pexpiretime else b"0",
                                b"1" if self.field_ttl else b"0", *admissible))
            return True
        value_max = min(self.options.batch_bytes // SCRIPT_VALUE_SHARE, self.options.max_payload)
        self.bulk.send(pack(b"EVAL", self.script, b"0", b"%d" % value_max, b"%d" % self.options.batch_bytes,
                            b"1" if self.has_pexpiretime else b"0", b"%d" % (self.options.target_rdb or 0),
                            *admissible))
        return True

    def finish(self, keys: list[bytes], in_flight: bool, counts: DumpCounts, sink: RecordSink) -> None:
        keys = self._admissible(keys, counts)
        if in_flight:
            replies = self.bulk.read(1)[0]
            if not isinstance(replies, ReplyError):
                if self.struct_batches:
                    self._struct_batch(keys, replies, counts, sink)
                else:
                    self._scripted(keys, replies, counts, sink)
                return
            self.use_script = False  # scripting or MEMORY is not allowed here: plain pipelines instead
        if keys:
            self._pipelined(keys, counts, sink)

    def _pipelined(self, keys: list[bytes], counts: DumpCounts, sink: RecordSink) -> None:
        small, large = [], []
        for key, expiry, size in zip(keys, *self._probe(keys)):
            if expiry == -2:
                counts.vanished += 1
            elif self.struct_batches or size > self.options.max_payload:
                large.append((key, expiry))
            else:
                small.append((key, size))
        self._dump(small, counts, sink)
        self._read_structs(large, counts, sink)

    def _struct_batch(self, keys: list[bytes], replies: list, counts: DumpCounts, sink: RecordSink) -> None:
        """The struct script's reply: small values are records at once; the rest is read key by key, chunked."""
        by_type = []
        for key, expiry, kind, value, ttls in zip(keys, replies[0::4], replies[1::4], replies[2::4], replies[3::4]):
            if expiry == -2 or kind == b"none":
                counts.vanished += 1
            elif value is None:
                by_type.append((key, expiry))
            else:
                items, record_type = ([value], "string") if kind == b"string" else (value, kind.decode())
                if ttls is not None and max(ttls, default=-1) >= 0:
                    items, record_type = _ttl_triples(value, ttls), "hash-ttl"
                counts.bytes += sum(map(len, items))
                counts.struct_keys += 1
                sink.add(Record(key, expiry, kind=STRUCT, type=record_type, items=items))
        self._read_structs(by_type, counts, sink)

    def _scripted(self, keys: list[bytes], replies: list, counts: DumpCounts, sink: RecordSink) -> None:
        expiries, values = replies[0:-1:2], replies[1:-1:2]
        if replies[-1] == 1:  # every key plain: the batch goes to the segment as it is
            return _keep(keys, expiries, values, counts, sink)
        self._store_payloads(zip(keys, expiries, values), counts, sink)

    def _store_payloads(self, entries: Iterable[tuple[bytes, int, object]], counts: DumpCounts,
                        sink: RecordSink) -> None:
        """Store the DUMP payloads the target can take, counting the keys gone meanwhile. A size in place
        of a payload (a key the script left) is DUMPed in rounds, or read type by type if over
        --max-payload; so is a payload newer than the target."""
        keys, expiries, payloads, to_dump, by_type = [], [], [], [], []
        target_rdb, max_payload = self.options.target_rdb, self.options.max_payload
        for key, expiry, payload in entries:
            if expiry == -2 or payload is None:
                counts.vanished += 1
            elif isinstance(payload, ReplyError):
                self._skip(key, f"DUMP refused: {payload}", counts)
            elif isinstance(payload, int) and payload <= max_payload:
                to_dump.append((key, payload))
            elif isinstance(payload, int) or (target_rdb is not None and rdb_version_of(payload) > target_rdb):
                by_type.append((key, expiry))
            else:
                keys.append(key)
                expiries.append(expiry)
                payloads.append(payload)
        _keep(keys, expiries, payloads, counts, sink)
        self._dump(to_dump, counts, sink)
        self._read_structs(by_type, counts, sink)

    def _admissible(self, keys: list[bytes], counts: DumpCounts) -> list[bytes]:
        counts.scanned += len(keys)
        admissible = _admissible_names(keys)
        if len(admissible) < len(keys):
            for key in keys:
                if len(key) > MAX_KEY_BYTES:
                    self._skip(key, "key name over 4 KiB (ElastiCache Serverless limit)", counts)
        return admissible

    def _skip(self, key: bytes, reason: str, counts: DumpCounts) -> None:
        counts.skipped[reason] += 1
        self.skipped_keys.append((key, reason))

    def _probe(self, keys: list[bytes]) -> tuple[list[int], list[int]]:
        """Absolute expiry and approximate size of each key, in one pipelined round trip."""
        size_cmd = (b"MEMORY", b"USAGE") if self.has_memory_usage else (b"TYPE",)
        expiry_reads, count = self._expiry_reads(keys)
        self.wire.send(expiry_reads + b"".join(pack(*size_cmd, key) for key in keys))
        replies = self.wire.read(count + len(keys))
        expiries, sizes = self._absolute_expiries(replies[:count]), replies[count:]
        if not self.has_memory_usage:
            return expiries, self._lengths(keys, [text_of(r) for r in sizes])
        if any(isinstance(reply, ReplyError) for reply in sizes):
            self.has_memory_usage = False  # MEMORY is disabled here, as on ElastiCache Serverless
            return self._probe(keys)
        return expiries, [reply or 0 for reply in sizes]

    def _expiry_reads(self, keys: list[bytes]) -> tuple[bytes, int]:
        """The commands that read each key's expiry, and their reply count. Without PEXPIRETIME: the
        server's TIME, then every PTTL, all before any DUMP, so that no DUMP's time shortens a TTL."""
        if self.has_pexpiretime:
            return b"".join(pack(b"PEXPIRETIME", key) for key in keys), len(keys)
        return pack(b"TIME") + b"".join(pack(b"PTTL", key) for key in keys), len(keys) + 1

    def _absolute_expiries(self, replies: list) -> list[int]:
        """The replies of `_expiry_reads` as absolute expiries (ms), -2 for a key that is gone."""
        if self.has_pexpiretime:
            return [_absolute(reply, None) for reply in replies]
        seconds, micros = replies[0]
        now = int(seconds) * 1000 + int(micros) // 1000
        return [_absolute(reply, now) for reply in replies[1:]]

    def _lengths(self, keys: list[bytes], types: list[str]) -> list[int]:
        """Estimated size from the type's length command, where MEMORY USAGE is not allowed."""
        commands = [pack(LENGTH_COMMANDS.get(kind, b"EXISTS"), key) for key, kind in zip(keys, types)]
        self.wire.send(b"".join(commands))
        replies = self.wire.read(len(commands))
        return [estimated_size(key, kind, reply) if isinstance(reply, int) else 0
                for key, kind, reply in zip(keys, types, replies)]

    def _dump(self, keys: list[tuple[bytes, int]], counts: DumpCounts, sink: RecordSink) -> None:
        """DUMP these (key, size) pairs one key per command, outside any script, in pipelined rounds of
        at most --batch-bytes of summed size: the server serves its other clients between rounds, and
        neither its reply buffer nor this process holds more than a round. Each round reads its own
        expiries first (the keys may have changed since the script looked)."""
        for round_keys in _rounds(keys, self.options.batch_bytes):
            expiry_reads, count = self._expiry_reads(round_keys)
            self.wire.send(expiry_reads + b"".join(pack(b"DUMP", key) for key in round_keys))
            replies = self.wire.read(count + len(round_keys))
            self._store_payloads(zip(round_keys, self._absolute_expiries(replies[:count]), replies[count:]),
                                 counts, sink)

    def _read_structs(self, keys: list[tuple[bytes, int]], counts: DumpCounts, sink: RecordSink) -> None:
        if not keys:
            return
        self.wire.send(b"".join(pack(b"TYPE", key) for key, _ in keys))
        for (key, expiry), kind in zip(keys, map(text_of, self.wire.read(len(keys)))):
            if kind == "none":
                counts.vanished += 1
            elif kind not in _STRUCT_READERS:
                self._skip(key, f"type {kind} cannot be written type by type (module type?)", counts)
            else:
                self._read_struct(key, kind, expiry, counts, sink)

    def _read_struct(self, key: bytes, kind: str, expiry: int, counts: DumpCounts, sink: RecordSink) -> None:
        """The key's value type by type, streamed in chunks of at most CHUNK_ITEMS members."""
        first = True
        chunks = _STRUCT_READERS[kind](self.wire, key)
        if kind == "hash" and self.field_ttl:
            chunks = _with_field_ttls(self.wire, key, chunks)
        for offset, items, record_type in chunks:
            counts.bytes += sum(map(len, items))
            sink.add(Record(key, expiry, kind=STRUCT, type=record_type, offset=offset, first=first, items=items))
            first = False
        if first:
            counts.vanished += 1
        else:
            counts.struct_keys += 1


def _keep(keys: list[bytes], expiries: list[int], payloads: list[bytes], counts: DumpCounts,
          sink: RecordSink) -> None:
    counts.dumped += len(keys)
    counts.bytes += sum(map(len, payloads))
    sink.add_dumps(keys, expiries, payloads)


def _admissible_names(keys: list[bytes]) -> list[bytes]:
    """The keys whose names the target accepts (usually all of them: checked in one step)."""
    if not keys or max(map(len, keys)) <= MAX_KEY_BYTES:
        return keys
    return [key for key in keys if len(key) <= MAX_KEY_BYTES]


def _rounds(keys: list[tuple[bytes, int]], budget: int) -> Iterator[list[bytes]]:
    """The keys of consecutive (key, size) pairs, in groups whose sizes add up to at most `budget`
    (a bigger key alone)."""
    return ([key for key, _ in group] for group in budgeted(keys, itemgetter(1), budget))


def _absolute(reply, now: int | None) -> int:
    """PEXPIRETIME answers the absolute time (now is None); PTTL what is left, as of the server's `now`.
    A refused read counts as a key gone: it is counted as vanished, never copied without its expiry."""
    return GONE if isinstance(reply, ReplyError) else absolute_expiry(reply, now)


def text_of(reply) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def _ttl_triples(flat: list[bytes], ttls: list[int]) -> list[bytes]:
    """field, value, expiry (absolute ms, -1 for none) for each field still there (-2: gone since HSCAN)."""
    items = []
    for field, value, ttl in zip(flat[0::2], flat[1::2], ttls):
        if ttl != -2:
            items += [field, value, b"%d" % ttl]
    return items


def _with_field_ttls(wire: Wire, key: bytes, chunks: Iterator[tuple[int, list, str]]
                     ) -> Iterator[tuple[int, list, str]]:
    """Hash chunks with their fields' expiries (HPEXPIRETIME): a chunk where any field has one is a hash-ttl
    chunk, so the fields are never written without their expiries."""
    for offset, flat, record_type in chunks:
        fields = flat[0::2]
        ttls = wire.call(b"HPEXPIRETIME", key, b"FIELDS", b"%d" % len(fields), *fields, check=False)
        if not isinstance(ttls, list):  # the key is gone (or changed type) since HSCAN: nothing more of it
            return
        yield (offset, _ttl_triples(flat, ttls), "hash-ttl") if max(ttls, default=-1) >= 0 else (
            offset, flat, record_type)


def _scan_chunks(wire: Wire, command: bytes, key: bytes, record_type: str) -> Iterator[tuple[int, list, str]]:
    """HSCAN/SSCAN/ZSCAN in windows. SCAN may repeat members; the writes are idempotent, so that is fine."""
    cursor = b"0"
    while True:
        cursor, items = wire.call(command, key, cursor, b"COUNT", b"%d" % CHUNK_ITEMS)
        if items:
            yield 0, items, record_type
        if cursor == b"0":
            return


def _read_string(wire: Wire, key: bytes) -> Iterator[tuple[int, list, str]]:
    length = wire.call(b"STRLEN", key)
    if length == 0:
        if wire.call(b"EXISTS", key):
            yield 0, [b""], "string"
        return
    for offset in range(0, length, STRING_CHUNK):
        chunk = wire.call(b"GETRANGE", key, b"%d" % offset, b"%d" % (offset + STRING_CHUNK - 1))
        if chunk:
            yield offset, [chunk], "string"


def _read_list(wire: Wire, key: bytes) -> Iterator[tuple[int, list, str]]:
    offset = 0
    while True:
        items = wire.call(b"LRANGE", key, b"%d" % offset, b"%d" % (offset + CHUNK_ITEMS - 1))
        if not items:
            return
        yield offset, items, "list"
        offset += len(items)


_STRUCT_READERS: dict[str, Callable[[Wire, bytes], Iterator[tuple[int, list, str]]]] = {
    "string": _read_string,
    "list": _read_list,
    "hash": lambda wire, key: _scan_chunks(wire, b"HSCAN", key, "hash"),
    "set": lambda wire, key: _scan_chunks(wire, b"SSCAN", key, "set"),
    "zset": lambda wire, key: _scan_chunks(wire, b"ZSCAN", key, "zset"),
    "stream": read_stream,
}


def read_records(topology: Topology, keys: list[bytes], options: DumpOptions = DumpOptions()
                 ) -> tuple[list[Record], DumpCounts]:
    """Read a few named keys (repair): each from the master that owns its slot."""
    owners = topology.slot_owners()
    by_node: dict[int, list[bytes]] = {}
    for key in keys:
        by_node.setdefault(owners[key_slot(key)], []).append(key)
    records, counts = RecordList(), DumpCounts()
    for index, node_keys in by_node.items():
        node = topology.masters[index]
        wire = Wire(topology.endpoint, node.host, node.port, options.db)
        try:
            reader = KeyReader(wire, wire, topology, options)
            for start in range(0, len(node_keys), options.scan_count):
                reader.read(node_keys[start:start + options.scan_count], counts, records)
        finally:
            wire.close()
    return list(records), counts
