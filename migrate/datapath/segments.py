"""Dump records and the segment codec.

A record is one key: either a DUMP payload (restored as is), or one chunk of the key's logical value
("struct" records, used for big keys and for targets with an older RDB version). A struct chunk
carries its offset, so replaying it twice never doubles a list or a string.

A segment stores its DUMP records column by column, each with its key's hash slot, so that replay
groups them by node and builds their RESTOREs without a Python step per key. Replay order is the
DUMP records in the order read (per node), then the struct records in the order read. The dump never
lets a key's DUMP record follow its struct record in one segment.

Segment file layout (immutable once renamed into place):
    MAGIC (8 bytes)
    body: one zstd frame holding
        counts: DUMP records n, struct records m (u32 each)
        slots (u16 x n), expiries (i64 x n), key lengths (u32 x n), payload lengths (u32 x n)
        every key, then every payload
        the struct records, one after the other: a head, the key, the items' lengths (u32 x count), the items
    trailer: body length (u64), xxh3-64 of the body (u64), record count (u64), END (8 bytes)
"""

from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

import xxhash
import zstandard

from ..errors import BadInput
from ..net.keyspace import NO_EXPIRY, key_slots
from ..net.rdb import MIN_PAYLOAD, rdb_version_of

MAGIC = b"RMSEG\x03\n\x00"
END = b"RMEND\x03\n\x00"
# Version 2 segments (each item's length before the item) are still read; their records are a subset of version 3's.
READABLE = {b"\x02": b"RMEND\x02\n\x00", b"\x03": END}
TRAILER = struct.Struct("<QQQ8s")

DUMP = 0
STRUCT = 1

# The type byte of a struct record in segment files. Written to disk: append only, never reorder. It is not
# verify/digest.py's DIGEST_TYPES: that one numbers the digests' seeds, and it has no stream-group (a
# record kind, not a Redis type) but has "none" and "other".
# A stream is written whole as: its entries ("stream", an entry with 0 fields is a placeholder for a deleted entry
# still pending in a group), "stream-groups" (the counters, the groups and their consumers), "stream-pel" (one
# group's pending entries) and "stream-end" (placeholders to delete, the counters again). "hash-ttl": a hash
# chunk whose fields carry their own expiries, as field, value, absolute expiry ms (or -1) triples.
CHUNK_TYPES = ("string", "hash", "list", "set", "zset", "stream", "stream-group", "stream-groups", "stream-pel",
               "stream-end", "hash-ttl")
CHUNK_TYPE_CODES = {name: code for code, name in enumerate(CHUNK_TYPES)}

_COUNTS = struct.Struct("<II")
_STRUCT_HEAD = struct.Struct("<BqIBQBI")  # kind, expire_at, key length, type, offset, first, item count
_HEAD_SIZE = _STRUCT_HEAD.size
_unpack_head = _STRUCT_HEAD.unpack_from
_LEN = struct.Struct("<I")
_COLUMNS = "HqII"  # array type codes: slots, expiries, key lengths, payload lengths
_SWAP = sys.byteorder != "little"


@dataclass(slots=True)
class Record:
    """One key (or one chunk of a big key) with its absolute expiry in ms, or NO_EXPIRY."""

    key: bytes
    expire_at: int
    payload: bytes = b""          # DUMP payload (kind DUMP)
    kind: int = DUMP
    type: str = ""                # struct records: the Redis type
    offset: int = 0               # struct records: element (list) or byte (string) offset of this chunk
    first: bool = True            # struct records: the first chunk deletes the key before writing
    items: list[bytes] | tuple = ()  # struct records: members, flattened pairs for hash/zset

    @property
    def rdb_version(self) -> int:
        return rdb_version_of(self.payload) if self.kind == DUMP else 0


Indices = range | list[int]


@dataclass
class Segment:
    """A decoded segment: the DUMP records as columns (see the module docstring), then struct records."""

    slots: array
    expiries: array
    keys: bytes
    key_ends: list[int]
    payloads: bytes
    payload_ends: list[int]
    structs: list[Record] = field(default_factory=list)
    _groups: tuple = ()
    _soonest: int | None = None

    def __post_init__(self) -> None:
        self.key_starts = [0, *self.key_ends[:-1]]
        self.payload_starts = [0, *self.payload_ends[:-1]]

    @property
    def dump_count(self) -> int:
        return len(self.slots)

    @property
    def key_count(self) -> int:
        """Keys (not chunks) in the segment, for progress."""
        return self.dump_count + sum(record.first for record in self.structs)

    def groups(self, owners: list[int]) -> list[tuple[int, Indices]]:
        """The DUMP records of each node (owners: node per slot), in segment order."""
        if self._groups and self._groups[0] is owners:
            return self._groups[1]
        nodes = list(map(owners.__getitem__, self.slots))
        if not nodes:
            groups = []
        elif nodes.count(nodes[0]) == len(nodes):  # one node (a serverless cache): no sorting out at all
            groups = [(nodes[0], range(len(nodes)))]
        else:  # a stable sort by node, cut where each node's records end
            order = sorted(range(len(nodes)), key=nodes.__getitem__)
            groups, start = [], 0
            for node in sorted(set(nodes)):
                end = start + nodes.count(node)
                groups.append((node, order[start:end]))
                start = end
        self._groups = (owners, groups)
        return groups

    def key_at(self, index: int) -> bytes:
        return self.keys[self.key_starts[index]:self.key_ends[index]]

    def keys_at(self, indices: Indices) -> list[bytes]:
        return _pick(self.keys, self.key_starts, self.key_ends, indices)

    def payloads_at(self, indices: Indices) -> list[bytes]:
        return _pick(self.payloads, self.payload_starts, self.payload_ends, indices)

    def expiries_at(self, indices: Indices) -> array | list[int]:
        if isinstance(indices, range):
            return self.expiries[indices.start:indices.stop]
        return list(map(self.expiries.__getitem__, indices))

    def dump_records(self, indices: Indices | None = None) -> list[Record]:
        indices = range(self.dump_count) if indices is None else indices
        return list(map(Record, self.keys_at(indices), self.expiries_at(indices), self.payloads_at(indices)))

    def records(self) -> list[Record]:
        """Every record, in replay order."""
        return self.dump_records() + self.structs

    @property
    def soonest_expiry(self) -> int:
        """The earliest expiry among the DUMP records (2**64 - 1 if none expires)."""
        if self._soonest is None:
            self._soonest = min(array("Q", self.expiries.tobytes()), default=2**64 - 1)  # NO_EXPIRY: the largest
        return self._soonest


def _pick(blob: bytes, starts: list[int], ends: list[int], indices: Indices) -> list[bytes]:
    """The pieces of `blob` at these indices: piece i is blob[starts[i]:ends[i]]."""
    if isinstance(indices, range):
        return list(map(blob.__getitem__, map(slice, starts[indices.start:indices.stop],
                                              ends[indices.start:indices.stop])))
    return list(map(blob.__getitem__, map(slice, map(starts.__getitem__, indices), map(ends.__getitem__, indices))))


def encode_struct(record: Record) -> bytes:
    """Head, key, every item's length, then the items: packed with no Python step per item."""
    lengths = array("I", map(len, record.items))
    if _SWAP:
        lengths.byteswap()
    return b"".join((_STRUCT_HEAD.pack(STRUCT, record.expire_at, len(record.key), CHUNK_TYPE_CODES[record.type],
                                       record.offset, record.first, len(record.items)), record.key,
                     lengths.tobytes(), *record.items))


def decode_body(body: bytes, source: Path | str, version: bytes = MAGIC[5:6]) -> Segment:
    """A segment body, checked. Any inconsistency is a corrupt segment, never a silent skip."""
    try:
        dump_count, struct_count = _COUNTS.unpack_from(body, 0)
        pos = _COUNTS.size
        columns = []
        for code in _COLUMNS:
            width = array(code).itemsize
            column = array(code, body[pos:pos + width * dump_count])
            if len(column) != dump_count:
                raise ValueError("the segment ends inside its record table")
            if _SWAP:
                column.byteswap()
            columns.append(column)
            pos += width * dump_count
        slots, expiries, key_lengths, payload_lengths = columns
        _check_columns(slots, expiries, payload_lengths)
        key_ends = list(accumulate(key_lengths))
        payload_ends = list(accumulate(payload_lengths))
        keys_size = key_ends[-1] if dump_count else 0
        payloads_size = payload_ends[-1] if dump_count else 0
        keys, pos = body[pos:pos + keys_size], pos + keys_size
        payloads, pos = body[pos:pos + payloads_size], pos + payloads_size
        if len(payloads) != payloads_size:
            raise ValueError("record runs past the end of the segment")
        view = memoryview(body)
        structs = []
        decode = _decode_struct if version == MAGIC[5:6] else _decode_struct_v2
        for _ in range(struct_count):
            record, pos = decode(body, view, pos)
            structs.append(record)
        if pos != len(body):
            raise ValueError(f"{len(body) - pos} bytes after the last record")
    except (struct.error, ValueError, IndexError, OverflowError) as exc:
        raise corrupt(source, str(exc)) from None
    return Segment(slots, expiries, keys, key_ends, payloads, payload_ends, structs)


def _check_columns(slots: array, expiries: array, payload_lengths: array) -> None:
    if not slots:
        return
    if max(slots) >= 16384:
        raise ValueError("the slot column is out of range")
    if min(expiries) < NO_EXPIRY:
        raise ValueError(f"a record has expiry {min(expiries)}")
    if min(payload_lengths) < MIN_PAYLOAD:
        raise ValueError("a DUMP payload is too short to be one")


def _decode_head(body: bytes, view: memoryview, pos: int) -> tuple:
    kind_code, expire_at, key_len, type_code, offset, first, count = _STRUCT_HEAD.unpack_from(body, pos)
    if kind_code != STRUCT:
        raise ValueError(f"unknown record kind {kind_code} at byte {pos}")
    pos += _STRUCT_HEAD.size
    key = bytes(view[pos:pos + key_len])
    if len(key) != key_len:
        raise ValueError("record runs past the end of the segment")
    return expire_at, key, type_code, offset, first, count, pos + key_len


def _decode_struct(body: bytes, view: memoryview, pos: int) -> tuple[Record, int]:
    """Head, key, the items' lengths, the items (the replay hot path for type-by-type copies: kept lean)."""
    kind_code, expire_at, key_len, type_code, offset, first, count = _unpack_head(body, pos)
    if kind_code != STRUCT:
        raise ValueError(f"unknown record kind {kind_code} at byte {pos}")
    key_start = pos + _HEAD_SIZE
    key_end = key_start + key_len
    items_start = key_end + 4 * count
    if items_start > len(body):
        raise ValueError("record runs past the end of the segment")
    if count == 1:
        end = items_start + _LEN.unpack_from(body, key_end)[0]
        items = [body[items_start:end]]
    else:
        lengths = array("I", body[key_end:items_start])
        if _SWAP:
            lengths.byteswap()
        ends = list(accumulate(lengths, initial=items_start))
        end = ends[-1]
        items = list(map(body.__getitem__, map(slice, ends, ends[1:])))
    if end > len(body):
        raise ValueError("record runs past the end of the segment")
    return _record(body[key_start:key_end], expire_at, type_code, offset, first, items), end


def _decode_struct_v2(body: bytes, view: memoryview, pos: int) -> tuple[Record, int]:
    """A version 2 struct record: each item's length before the item."""
    expire_at, key, type_code, offset, first, count, pos = _decode_head(body, view, pos)
    items = []
    for _ in range(count):
        (length,) = _LEN.unpack_from(body, pos)
        pos += _LEN.size
        items.append(bytes(view[pos:pos + length]))
        pos += length
    if pos > len(body):
        raise ValueError("record runs past the end of the segment")
    return _record(key, expire_at, type_code, offset, first, items), pos


def _record(key: bytes, expire_at: int, type_code: int, offset: int, first: int, items: list[bytes]) -> Record:
    kind = CHUNK_TYPES[type_code]
    _check_items(kind, items)
    if expire_at < NO_EXPIRY:
        raise ValueError(f"record for key {key[:60]!r} has expiry {expire_at}")
    return Record(key, expire_at, kind=STRUCT, type=kind, offset=offset, first=bool(first), items=items)


def _check_items(kind: str, items: list[bytes]) -> None:
    """A struct chunk's items have the shape its writer needs; anything else is a corrupt segment."""
    if kind == "string" and len(items) != 1:
        raise ValueError(f"a string chunk holds {len(items)} items, not 1")
    if kind in ("hash", "zset") and len(items) % 2:
        raise ValueError(f"a {kind} chunk holds an odd number of items")
    if kind == "stream-group" and not len(items) % 2:
        raise ValueError("a stream-group record needs the last ID, then name/ID pairs")
    if kind == "stream":
        pos = 0
        while pos < len(items):
            if pos + 1 >= len(items) or not items[pos + 1].isdigit():
                raise ValueError("a stream chunk has an entry without its field count")
            pos += 2 + 2 * int(items[pos + 1])
        if pos != len(items):
            raise ValueError("a stream chunk's last entry is cut short")
    if kind == "hash-ttl" and (len(items) % 3 or not all(_is_int(t) for t in items[2::3])):
        raise ValueError("a hash-ttl chunk needs field, value, expiry triples")
    if kind == "stream-pel" and (not items or (len(items) - 1) % 4
                                 or not all(_is_int(t) for t in items[3::4] + items[4::4])):
        raise ValueError("a stream-pel record needs the group, then id, consumer, time, count quadruples")
    if kind == "stream-end" and len(items) < 3:
        raise ValueError("a stream-end record needs the last ID and the counters")
    if kind == "stream-groups":
        stream_groups(items)


def _is_int(item: bytes) -> bool:
    return item.lstrip(b"-").isdigit()


def stream_groups(items: list[bytes]) -> tuple[tuple[bytes, bytes, bytes], list[tuple]]:
    """A stream-groups record's counters (last ID, entries-added, max-deleted ID; b"" where the source has none)
    and its groups: (name, last-delivered ID, entries-read or b"", consumer names). ValueError if malformed."""
    if len(items) < 3:
        raise ValueError("a stream-groups record needs the last ID and the counters")
    groups, pos = [], 3
    while pos < len(items):
        if pos + 3 >= len(items) or not items[pos + 3].isdigit():
            raise ValueError("a stream-groups record has a group without its consumer count")
        count = int(items[pos + 3])
        consumers = items[pos + 4:pos + 4 + count]
        if len(consumers) != count:
            raise ValueError("a stream-groups record's last group is cut short")
        groups.append((items[pos], items[pos + 1], items[pos + 2], consumers))
        pos += 4 + count
    return (items[0], items[1], items[2]), groups


def corrupt(path: Path | str, why: str) -> BadInput:
    return BadInput(f"dump segment {path} is corrupt: {why}",
                    "do not edit segment files; move the run directory aside and dump again, or restore the "
                    "segment from a backup copy of the run directory")


class SegmentWriter:
    """Accumulates one segment's records; `finish()` returns the file's bytes."""

    def __init__(self, level: int = 1) -> None:
        self._slots: list[int] = []
        self._expiries: list[int] = []
        self._keys: list[bytes] = []
        self._payloads: list[bytes] = []
        self._structs: list[bytes] = []
        self._struct_keys: set[bytes] = set()
        self.count = 0
        self.raw_bytes = 0
        self._level = level

    def add_dumps(self, keys: list[bytes], expiries: list[int], payloads: list[bytes]) -> None:
        """The dump hot path: a batch of DUMP records, with no Python step per key."""
        self._slots += key_slots(keys)
        self._keys += keys
        self._expiries += expiries
        self._payloads += payloads
        self.count += len(keys)
        self.raw_bytes += 18 * len(keys) + sum(map(len, keys)) + sum(map(len, payloads))

    def add(self, record: Record) -> None:
        if record.kind == DUMP:
            self.add_dumps([record.key], [record.expire_at], [record.payload])
            return
        data = encode_struct(record)
        self._structs.append(data)
        self._struct_keys.add(record.key)
        self.count += 1
        self.raw_bytes += len(data)

    def holds_struct_of(self, keys: list[bytes]) -> bool:
        """Whether one of these keys has a struct record here: its DUMP record must then go to a later
        segment, since replay writes a segment's DUMP records before its struct records."""
        return bool(self._struct_keys) and not self._struct_keys.isdisjoint(keys)

    def body(self) -> bytes:
        """The segment's records, uncompressed (see the module docstring)."""
        columns = [array(code, values) for code, values in zip(_COLUMNS, (
            self._slots, self._expiries, map(len, self._keys), map(len, self._payloads)))]
        if _SWAP:
            for column in columns:
                column.byteswap()
        return b"".join([_COUNTS.pack(len(self._slots), len(self._structs)), *columns, *self._keys,
                         *self._payloads, *self._structs])

    def finish(self) -> bytes:
        return seal(self.body(), self.count, self._level)


def seal(body: bytes, count: int, level: int = 1) -> bytes:
    """A segment file's bytes: the compressed body framed by MAGIC and a checksummed trailer."""
    packed = zstandard.ZstdCompressor(level=level).compress(body)
    return MAGIC + packed + TRAILER.pack(len(packed), xxhash.xxh3_64_intdigest(packed), count, END)


def load_segment(path: Path) -> Segment:
    """Check the segment's framing and checksum before decoding it, so a bad file never half-replays."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read dump segment {path}: {exc.strerror}",
                       "check the run directory's permissions") from None
    return parse_segment(data, path)


def parse_segment(data: bytes, path: Path | str) -> Segment:
    """A segment file's bytes, checked then decoded; `path` names it in errors (a file or an S3 object)."""
    version = data[5:6]
    if data[:5] == MAGIC[:5] and (version not in READABLE or data[6:8] != MAGIC[6:]):
        raise BadInput(f"dump segment {path} was written by another version of redis-migrate",
                       "dump again into a new --run-dir with this version")
    if len(data) < len(MAGIC) + TRAILER.size or data[:5] != MAGIC[:5]:
        raise corrupt(path, "not a redis-migrate segment (bad header or truncated)")
    body_len, checksum, count, end = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    body = data[len(MAGIC):len(data) - TRAILER.size]
    if end != READABLE[version] or body_len != len(body):
        raise corrupt(path, "truncated or bad trailer")
    if xxhash.xxh3_64_intdigest(body) != checksum:
        raise corrupt(path, "checksum mismatch")
    try:
        raw = zstandard.ZstdDecompressor().decompress(body)
    except zstandard.ZstdError as exc:
        raise corrupt(path, f"cannot decompress: {exc}") from None
    segment = decode_body(raw, path, version)
    if segment.dump_count + len(segment.structs) != count:
        raise corrupt(path, f"holds {segment.dump_count + len(segment.structs)} records, its trailer says {count}")
    return segment


def read_segment(path: Path) -> list[Record]:
    """Every record of a segment, in replay order."""
    return load_segment(path).records()
