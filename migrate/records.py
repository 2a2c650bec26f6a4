"""Dump records and the segment codec.

A record is one key: either a DUMP payload (restored as is), or one chunk of the key's logical value
("struct" records, used for big keys and for targets with an older RDB version). A struct chunk
carries its offset, so replaying it twice never doubles a list or a string.

Segment file layout (immutable once renamed into place):
    MAGIC (8 bytes)
    body: one zstd frame holding the records
    trailer: body length (u64), xxh3-64 of the body (u64), record count (u64), END (8 bytes)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import xxhash
import zstandard

from .errors import BadInput

MAGIC = b"RMSEG\x01\n\x00"
END = b"RMEND\x01\n\x00"
TRAILER = struct.Struct("<QQQ8s")
NO_EXPIRY = -1

DUMP = 0
STRUCT = 1

TYPES = ("string", "hash", "list", "set", "zset", "stream", "stream-group")
TYPE_CODES = {name: code for code, name in enumerate(TYPES)}

_DUMP_HEAD = struct.Struct("<BqII")     # kind, expire_at, key length, payload length
_STRUCT_HEAD = struct.Struct("<BqIBQBI")  # kind, expire_at, key length, type, offset, first, item count
_LEN = struct.Struct("<I")


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
        """A DUMP payload ends with a 2-byte little-endian RDB version, then an 8-byte CRC64."""
        return self.payload[-10] | self.payload[-9] << 8 if self.kind == DUMP else 0

    @property
    def size(self) -> int:
        return len(self.key) + len(self.payload) + sum(len(item) for item in self.items)


def skipped_entry(key: bytes, reason: str) -> dict:
    """How a skipped key is named in ledgers and reports: escaped text, cut at 200 characters."""
    return {"key": key.decode("utf-8", "backslashreplace")[:200], "reason": reason}


def encode(record: Record) -> bytes:
    if record.kind == DUMP:
        return b"".join((_DUMP_HEAD.pack(DUMP, record.expire_at, len(record.key), len(record.payload)),
                         record.key, record.payload))
    parts = [_STRUCT_HEAD.pack(STRUCT, record.expire_at, len(record.key), TYPE_CODES[record.type], record.offset,
                               record.first, len(record.items)), record.key]
    for item in record.items:
        parts.append(_LEN.pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def decode_all(body: bytes, source: Path) -> list[Record]:
    """Every record of a segment body. Any inconsistency is a corrupt segment, never a silent skip."""
    records = []
    append = records.append
    unpack_dump = _DUMP_HEAD.unpack_from
    head = _DUMP_HEAD.size
    end = len(body)
    pos = 0
    try:
        while pos < end:
            if body[pos] == DUMP:
                _, expire_at, key_len, payload_len = unpack_dump(body, pos)
                if expire_at < NO_EXPIRY:
                    raise ValueError(f"a record has expiry {expire_at}")
                key_start = pos + head
                payload_start = key_start + key_len
                pos = payload_start + payload_len
                if pos > end:
                    raise ValueError("record runs past the end of the segment")
                append(Record(body[key_start:payload_start], expire_at, body[payload_start:pos]))
            elif body[pos] == STRUCT:
                record, pos = _decode_struct(body, memoryview(body), pos)
                append(record)
            else:
                raise ValueError(f"unknown record kind {body[pos]} at byte {pos}")
    except (struct.error, ValueError, IndexError) as exc:
        raise corrupt(source, str(exc)) from None
    return records


def _decode_struct(body: bytes, view: memoryview, pos: int) -> tuple[Record, int]:
    _, expire_at, key_len, type_code, offset, first, count = _STRUCT_HEAD.unpack_from(body, pos)
    pos += _STRUCT_HEAD.size
    key = bytes(view[pos:pos + key_len])
    pos += key_len
    items = []
    for _ in range(count):
        (length,) = _LEN.unpack_from(body, pos)
        pos += _LEN.size
        items.append(bytes(view[pos:pos + length]))
        pos += length
    if pos > len(body) or len(key) != key_len:
        raise ValueError("record runs past the end of the segment")
    kind = TYPES[type_code]
    _check_items(kind, items)
    if expire_at < NO_EXPIRY:
        raise ValueError(f"record for key {key[:60]!r} has expiry {expire_at}")
    return Record(key, expire_at, kind=STRUCT, type=kind, offset=offset, first=bool(first), items=items), pos


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


def corrupt(path: Path, why: str) -> BadInput:
    return BadInput(f"dump segment {path} is corrupt: {why}",
                    "do not edit segment files; move the run directory aside and dump again, or restore the "
                    "segment from a backup copy of the run directory")


class SegmentWriter:
    """Accumulates encoded records for one segment; `finish()` returns the file's bytes."""

    def __init__(self, level: int = 1) -> None:
        self._parts: list[bytes] = []
        self.count = 0
        self.raw_bytes = 0
        self._level = level

    def add(self, record: Record) -> None:
        data = encode(record)
        self._parts.append(data)
        self.count += 1
        self.raw_bytes += len(data)

    def add_dump(self, key: bytes, expire_at: int, payload: bytes) -> None:
        """The dump hot path: a DUMP record encoded straight from the reply, no Record object."""
        self._parts.append(_DUMP_HEAD.pack(DUMP, expire_at, len(key), len(payload)))
        self._parts.append(key)
        self._parts.append(payload)
        self.count += 1
        self.raw_bytes += _DUMP_HEAD.size + len(key) + len(payload)

    def finish(self) -> bytes:
        body = zstandard.ZstdCompressor(level=self._level).compress(b"".join(self._parts))
        trailer = TRAILER.pack(len(body), xxhash.xxh3_64_intdigest(body), self.count, END)
        return MAGIC + body + trailer


def read_segment(path: Path) -> list[Record]:
    """Check the segment's framing and checksum before decoding it, so a bad file never half-replays."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read dump segment {path}: {exc.strerror}",
                       "check the run directory's permissions") from None
    if len(data) < len(MAGIC) + TRAILER.size or not data.startswith(MAGIC):
        raise corrupt(path, "not a redis-migrate segment (bad header or truncated)")
    body_len, checksum, count, end = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    body = data[len(MAGIC):len(data) - TRAILER.size]
    if end != END or body_len != len(body):
        raise corrupt(path, "truncated or bad trailer")
    if xxhash.xxh3_64_intdigest(body) != checksum:
        raise corrupt(path, "checksum mismatch")
    try:
        raw = zstandard.ZstdDecompressor().decompress(body)
    except zstandard.ZstdError as exc:
        raise corrupt(path, f"cannot decompress: {exc}") from None
    records = decode_all(raw, path)
    if len(records) != count:
        raise corrupt(path, f"holds {len(records)} records, its trailer says {count}")
    return records
