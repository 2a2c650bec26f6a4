"""Reads keys on one node in pipelined batches: type, absolute expiry, canonical digest and length.

Per batch, one round trip carries TYPE + PEXPIRETIME for every key (PTTL on servers older than
7.0, turned into an absolute time at the reply), and a second one the first window of each value
chosen by type: GETRANGE, LRANGE, ZRANGE WITHSCORES, HSCAN/SSCAN, XRANGE + XINFO STREAM FULL. A value
that fills its window is big: it is read on in larger windows, one key at a time, and digested as
it streams, so it is never held whole. Only commands that ElastiCache Serverless allows are used
(no DEBUG, OBJECT or MEMORY).
"""

from __future__ import annotations

import random
import time
from typing import NamedTuple

from ..net.keyspace import NO_EXPIRY, absolute_expiry, key_slot
from ..net.wire import ReplyError, Wire
from .digest import (
    DIGEST_TYPE_CODE,
    DIGESTS,
    digest_hash,
    digest_list,
    digest_set,
    digest_string,
    digest_zset,
    new_digest,
)

WINDOW = 1000              # elements in the first read of a collection
BIG_WINDOW = 10_000        # elements per read of the rest of a big collection
STRING_WINDOW = 1 << 20    # bytes per read of a string


class Detail(NamedTuple):
    """What both sides hold, so it is compared: stream counters (entries-added, max-deleted ID, entries-read;
    Redis 7.0+ and Valkey) and hash field TTLs (Redis 7.4+, Valkey 9). One side alone cannot be compared."""

    stream_counters: bool = False
    field_ttl: bool = False

    @classmethod
    def shared(cls, *sides) -> Detail:
        return cls(all(side.has_stream_counters for side in sides), all(side.has_hash_field_ttl for side in sides))


NO_DETAIL = Detail()


class View(NamedTuple):
    """One side's reading of one key. type "none" means absent."""

    type: str
    digest: int
    expire_at: int   # absolute ms, or NO_EXPIRY
    length: int      # bytes for a string, elements otherwise

    @property
    def present(self) -> bool:
        return self.type != "none"


ABSENT = View("none", 0, NO_EXPIRY, 0)


def bulk(arg: bytes) -> bytes:
    """One RESP bulk string; a key is packed once and reused by every command of its batch."""
    return b"$%d\r\n%b\r\n" % (len(arg), arg)


def prefix(*words: str, argc: int) -> bytes:
    """The fixed start of a command of `argc` arguments in all, e.g. prefix("TYPE", argc=2)."""
    return b"*%d\r\n" % argc + b"".join(bulk(word.encode()) for word in words)


_TYPE = prefix("TYPE", argc=2)
_PEXPIRETIME = prefix("PEXPIRETIME", argc=2)
_PTTL = prefix("PTTL", argc=2)
_GETRANGE = prefix("GETRANGE", argc=4)
_LRANGE = prefix("LRANGE", argc=4)
_ZRANGE = prefix("ZRANGE", argc=5)
_SSCAN = prefix("SSCAN", argc=5)
_HSCAN = prefix("HSCAN", argc=5)
_XRANGE = prefix("XRANGE", argc=6)
_XINFO_FULL = prefix("XINFO", "STREAM", argc=6)
_DUMP = prefix("DUMP", argc=2)

_FIRST = {
    b"string": _GETRANGE + b"%b" + bulk(b"0") + bulk(b"%d" % (STRING_WINDOW - 1)),
    b"list": _LRANGE + b"%b" + bulk(b"0") + bulk(b"%d" % (WINDOW - 1)),
    b"zset": _ZRANGE + b"%b" + bulk(b"0") + bulk(b"%d" % (WINDOW - 1)) + bulk(b"WITHSCORES"),
    b"set": _SSCAN + b"%b" + bulk(b"0") + bulk(b"COUNT") + bulk(b"%d" % WINDOW),
    b"hash": _HSCAN + b"%b" + bulk(b"0") + bulk(b"COUNT") + bulk(b"%d" % WINDOW),
    b"stream": _XRANGE + b"%b" + bulk(b"-") + bulk(b"+") + bulk(b"COUNT") + bulk(b"%d" % WINDOW)
               + _XINFO_FULL + b"%b" + bulk(b"FULL") + bulk(b"COUNT") + bulk(b"%d" % WINDOW),
}
_REPLIES = {b"stream": 2, b"none": 0}


# The common case, a value that fits in its first window, digested in one call (no digest object).
def _small_string(value: bytes):
    return (digest_string(value), len(value)) if len(value) < STRING_WINDOW else None


def _small_list(items: list):
    return (digest_list(items), len(items)) if len(items) < WINDOW else None


def _small_zset(flat: list):
    return (digest_zset(flat), len(flat) // 2) if len(flat) < 2 * WINDOW else None


def _small_set(reply: list):
    return (digest_set(reply[1]), len(reply[1])) if reply[0] == b"0" else None


def _small_hash(reply: list):
    return (digest_hash(reply[1]), len(reply[1]) // 2) if reply[0] == b"0" else None


def _string_digest(value: bytes):
    return digest_string(value) if len(value) < STRING_WINDOW else None


def _list_digest(items: list):
    return digest_list(items) if len(items) < WINDOW else None


def _zset_digest(flat: list):
    return digest_zset(flat) if len(flat) < 2 * WINDOW else None


def _set_digest(reply: list):
    return digest_set(reply[1]) if reply[0] == b"0" else None


def _hash_digest(reply: list):
    return digest_hash(reply[1]) if reply[0] == b"0" else None


# The digest of a value that fits in its first window (None: read on), by TYPE reply: for columns().
_SMALL_DIGEST = {b"string": _string_digest, b"list": _list_digest, b"zset": _zset_digest, b"set": _set_digest,
                 b"hash": _hash_digest}
# ... where no string fills its window (GETRANGE's reply is shorter): strings digested in C
_SMALL_DIGEST_SHORT = {**_SMALL_DIGEST, b"string": digest_string}
_WINDOWED = frozenset(_SMALL_DIGEST)  # types whose first window is one reply of one command
_CODE_OF_REPLY = {name.encode(): code for name, code in DIGEST_TYPE_CODE.items()}

_SMALL = {b"string": ("string", _small_string), b"list": ("list", _small_list), b"zset": ("zset", _small_zset),
          b"set": ("set", _small_set), b"hash": ("hash", _small_hash)}


def _type_name(reply: bytes) -> str:
    """TYPE's answer as a digest type; module types are "other"."""
    name = reply.decode(errors="replace") if isinstance(reply, bytes) else "other"
    return name if name in DIGESTS else "other"


def _unstable() -> int:
    """The digest of a key that changed under the read (an error reply): equal to nothing."""
    return random.getrandbits(64)


class Batch:
    """Keys on their way through a reader: probed (type, expiry), then their first windows read."""

    __slots__ = ("keys", "bulks", "types", "expires", "counts")

    def __init__(self, keys: list[bytes]) -> None:
        self.keys = keys
        self.bulks = list(map(b"$%d\r\n%b\r\n".__mod__, zip(map(len, keys), keys)))  # bulk(key), in C
        self.types: list = []
        self.expires: list[int] = []
        self.counts: list[int] = []


class Columns(NamedTuple):
    """The present keys of a batch, column by column (what a scan folds, with no object per key)."""

    keys: list[bytes]
    codes: list[int]
    digests: list[int]
    expires: list[int]


def columns_of(keys: list[bytes], views: list[View]) -> Columns:
    present = [(key, view) for key, view in zip(keys, views) if view.type != "none"]
    return Columns([key for key, _ in present], [DIGEST_TYPE_CODE[view.type] for _, view in present],
                   [view.digest for _, view in present], [view.expire_at for _, view in present])


class DigestReader:
    """Reads batches of keys on one node through a Wire.

    `read` does a batch in two round trips. A scan worker instead drives the stages itself
    (probe, probed, windows, views) to keep the server busy while it digests the previous batch;
    big values are then read on `side`, a second connection, since `wire` has replies in flight.
    """

    def __init__(self, wire: Wire, exact_ttl: bool, digest: bool = True, side: Wire | None = None,
                 detail: Detail = NO_DETAIL) -> None:
        self.detail = detail
        self.wire = wire
        self.side = side or wire
        self._expiry = _PEXPIRETIME if exact_ttl else _PTTL
        self._exact_ttl = exact_ttl
        self.with_digest = digest

    def _call(self, payload: bytes, count: int) -> list:
        self.wire.send(payload)
        return self.wire.read(count)

    def _one(self, *args: bytes | str | int):
        return self.side.call(*(a if isinstance(a, bytes) else str(a).encode() for a in args))

    def read(self, keys: list[bytes]) -> list[View]:
        """A View for each key, in order; ABSENT for a key that does not exist."""
        if not keys:
            return []
        batch = Batch(keys)
        self.probed(batch, self._call(*self.probe(batch)))
        if not self.with_digest:
            return self.census(batch)
        return self.views(batch, self._call(*self.windows(batch)))

    def probe(self, batch: Batch) -> tuple[bytes, int]:
        """TYPE and PEXPIRETIME (or PTTL) of every key: the commands and their reply count."""
        both = (_TYPE + b"%b" + self._expiry + b"%b").__mod__
        return b"".join(map(both, zip(batch.bulks, batch.bulks))), 2 * len(batch.keys)

    def probed(self, batch: Batch, replies: list) -> None:
        batch.types = replies[0::2]
        batch.expires = replies[1::2]
        if not self._exact_ttl or ReplyError in map(type, batch.expires):
            now = int(time.time() * 1000)
            batch.expires = [self._absolute(e, now) for e in batch.expires]

    def census(self, batch: Batch) -> list[View]:
        """Type and expiry only, no value read."""
        return [ABSENT if t == b"none" or e == -2 else View(_type_name(t), 0, e, 0)
                for t, e in zip(batch.types, batch.expires)]

    def windows(self, batch: Batch) -> tuple[bytes, int]:
        """The first window of each value, chosen by type: the commands and their reply count."""
        if _WINDOWED.issuperset(batch.types):  # the common case: one command per key, built in C
            batch.counts = [1] * len(batch.keys)
            return b"".join(map(bytes.__mod__, map(_FIRST.__getitem__, batch.types), batch.bulks)), len(batch.keys)
        parts, counts = [], []
        for b, type_name in zip(batch.bulks, batch.types):
            template = _FIRST.get(type_name)
            if template is None:
                template = b"" if type_name == b"none" else _DUMP + b"%b"
            parts.append(template.replace(b"%b", b))
            counts.append(_REPLIES.get(type_name, 1))
        batch.counts = counts
        return b"".join(parts), sum(counts)

    def columns(self, batch: Batch, replies: list) -> Columns:
        """The batch's present keys with their type codes, digests and expiries, from their first windows:
        a value that fits in its window is digested with no object per key. A batch with a stream, a module
        type, a gone key, an error or hash field TTLs goes key by key (views); a big value is read on, on `side`."""
        types, expires = batch.types, batch.expires
        if self.detail.field_ttl or not _WINDOWED.issuperset(types) or -2 in expires \
                or ReplyError in map(type, replies):
            return columns_of(batch.keys, self.views(batch, replies))
        small = _SMALL_DIGEST_SHORT if max(map(len, replies), default=0) < STRING_WINDOW else _SMALL_DIGEST
        digests = [digest(value) for digest, value in zip(map(small.__getitem__, types), replies)]
        if None in digests:
            for index in [index for index, digest in enumerate(digests) if digest is None]:
                digests[index] = self._digest(batch.keys[index], types[index], expires[index], replies[index]).digest
        return Columns(batch.keys, list(map(_CODE_OF_REPLY.__getitem__, types)), digests, expires)

    def views(self, batch: Batch, replies: list) -> list[View]:
        """Digest each key from its first window (reading on, on `side`, for a big value)."""
        views: list[View] = []
        append, small_values, next_reply = views.append, _SMALL.get, iter(replies).__next__
        for key, type_reply, expire_at, count in zip(batch.keys, batch.types, batch.expires, batch.counts):
            value = next_reply() if count == 1 else tuple(next_reply() for _ in range(count))
            if type_reply == b"none" or expire_at == -2:
                append(ABSENT)
                continue
            small = small_values(type_reply)
            if small is not None and type_reply == b"hash" and self.detail.field_ttl:
                small = None  # the fields' expiries are read too
            if small is not None and value.__class__ is not ReplyError:
                done = small[1](value)
                if done is not None:
                    append(View(small[0], done[0], expire_at, done[1]))
                    continue
            append(self._digest(key, type_reply, expire_at, value))
        return views

    def _absolute(self, reply, now: int) -> int:
        """A refused expiry read counts as no TTL: the key is still compared by type and value."""
        if not isinstance(reply, int):
            return NO_EXPIRY
        return absolute_expiry(reply, None if self._exact_ttl else now)

    def _digest(self, key: bytes, type_name: str, expire_at: int, value) -> View:
        type_name = _type_name(type_name)
        if isinstance(value, ReplyError) or (isinstance(value, tuple) and isinstance(value[0], ReplyError)):
            return View(type_name, _unstable(), expire_at, 0)
        digest = getattr(self, "_read_" + type_name)(key, value)
        return View(type_name, digest.intdigest(), expire_at, digest.length)

    def _read_string(self, key: bytes, value: bytes):
        digest = new_digest("string")
        while True:
            digest.update(value)
            if len(value) < STRING_WINDOW:
                return digest
            start = digest.length
            value = self._one("GETRANGE", key, start, start + STRING_WINDOW - 1)

    def _read_list(self, key: bytes, items: list):
        return self._ranged(new_digest("list"), items, 1, lambda start: self._one(
            "LRANGE", key, start, start + BIG_WINDOW - 1))

    def _read_zset(self, key: bytes, flat: list):
        return self._ranged(new_digest("zset"), flat, 2, lambda start: self._one(
            "ZRANGE", key, start, start + BIG_WINDOW - 1, "WITHSCORES"))

    @staticmethod
    def _ranged(digest, chunk: list, per_element: int, next_window):
        """Index-ranged reads (LRANGE/ZRANGE): a window shorter than asked for is the last."""
        asked = WINDOW
        while True:
            digest.update(chunk)
            if len(chunk) < asked * per_element:
                return digest
            chunk, asked = next_window(digest.length), BIG_WINDOW

    def _read_set(self, key: bytes, reply: list):
        return self._scanned("set", "SSCAN", key, reply)

    def _read_hash(self, key: bytes, reply: list):
        return self._scanned("hash", "HSCAN", key, reply)

    def _with_field_ttls(self, key: bytes, flat: list) -> list:
        """A hash window with each expiring field's absolute expiry folded into its value (HPEXPIRETIME)."""
        fields = flat[0::2]
        if not fields:
            return flat
        ttls = self._one("HPEXPIRETIME", key, "FIELDS", len(fields), *fields)
        return with_field_ttls(flat, ttls)

    def _scanned(self, type_name: str, scan: str, key: bytes, reply: list):
        """HSCAN/SSCAN: one call is enough for a small value; a big one is scanned on, deduplicated."""
        cursor, chunk = reply
        digest = new_digest(type_name, dedupe=cursor != b"0")
        while True:
            if type_name == "hash" and self.detail.field_ttl:
                chunk = self._with_field_ttls(key, chunk)
            digest.update(chunk)
            if cursor == b"0":
                return digest
            cursor, chunk = self._one(scan, key, cursor, "COUNT", BIG_WINDOW)

    def _read_stream(self, key: bytes, reply: tuple):
        """Entries, then what XINFO STREAM FULL tells: the last ID (and counters where both sides have them),
        each group with its consumers and pending entries (id, consumer, delivery count)."""
        entries, full = reply
        digest = new_digest("stream")
        while True:
            digest.update(entries)
            if len(entries) < WINDOW:
                break
            entries = self._one("XRANGE", key, b"(" + digest.last_id, "+", "COUNT", WINDOW)
        info = dict(zip(full[0::2], full[1::2]))
        counters = self.detail.stream_counters
        digest.set_last_id(info[b"last-generated-id"], _counter(info.get(b"entries-added")) if counters else b"",
                           _counter(info.get(b"max-deleted-entry-id")) if counters else b"")
        for group in info.get(b"groups") or []:
            fields = dict(zip(group[0::2], group[1::2]))
            name = fields[b"name"]
            digest.add_group(name, fields[b"last-delivered-id"],
                             _counter(fields.get(b"entries-read")) if counters else b"")
            digest.add_consumers(name, [dict(zip(c[0::2], c[1::2]))[b"name"] for c in fields.get(b"consumers") or []])
            pending = [(p[0], p[1], p[3]) for p in fields.get(b"pending") or []]
            while pending and len(pending) < (fields.get(b"pel-count") or 0):
                page = self._one("XPENDING", key, name, b"(" + pending[-1][0], "+", WINDOW)
                if not page:
                    break
                pending += [(p[0], p[1], p[3]) for p in page]
            digest.add_pending(name, pending)
        return digest

    def _read_other(self, key: bytes, payload):
        digest = new_digest("other")
        if payload is not None:
            digest.update(payload)
        return digest


def _counter(value) -> bytes:
    return b"" if value is None else value if isinstance(value, bytes) else b"%d" % value


def with_field_ttls(flat: list, ttls: list) -> list:
    """field, value pairs where an expiring field's value carries its absolute expiry: digested as one."""
    out = list(flat)
    for index, ttl in enumerate(ttls):
        if isinstance(ttl, int) and ttl >= 0:
            out[2 * index + 1] = out[2 * index + 1] + b"\x00field-ttl:%d" % ttl
    return out


class SideReader:
    """Reads any keys of a whole side, each on the master that owns its slot (for the few keys
    that verify re-reads, samples or repairs; full scans use one worker per master instead)."""

    def __init__(self, topology, db: int = 0, batch: int = WINDOW, detail: Detail = NO_DETAIL,
                 digest: bool = True) -> None:
        self.topology = topology
        self.detail = detail
        self.digest = digest  # False: type and expiry only (a census of the keys read)
        self.db = db
        self.exact_ttl = topology.has_pexpiretime
        self._owners = topology.slot_owners()
        self._readers: dict[int, DigestReader] = {}
        self._batch = batch

    def reader(self, index: int) -> DigestReader:
        if index not in self._readers:
            node = self.topology.masters[index]
            wire = Wire(self.topology.endpoint, node.host, node.port, self.db)
            self._readers[index] = DigestReader(wire, self.exact_ttl, digest=self.digest, detail=self.detail)
        return self._readers[index]

    def owner(self, key: bytes) -> int:
        return self._owners[key_slot(key)]

    def by_owner(self, keys) -> dict[int, list[bytes]]:
        groups: dict[int, list[bytes]] = {}
        for key in keys:
            groups.setdefault(self.owner(key), []).append(key)
        return groups

    def read(self, keys) -> dict[bytes, View]:
        """key -> View (ABSENT where the key does not exist)."""
        views: dict[bytes, View] = {}
        for index, group in self.by_owner(keys).items():
            reader = self.reader(index)
            for start in range(0, len(group), self._batch):
                chunk = group[start:start + self._batch]
                views.update(zip(chunk, reader.read(chunk)))
        return views

    def close(self) -> None:
        for reader in self._readers.values():
            reader.wire.close()
        self._readers.clear()

    def sample(self, count: int) -> list[bytes]:
        """About `count` random keys (RANDOMKEY), spread over the masters by their DBSIZE."""
        sizes = {}
        for index in range(len(self.topology.masters)):
            sizes[index] = self.reader(index).wire.call(b"DBSIZE")
        total = sum(sizes.values())
        keys: list[bytes] = []
        for index, size in sizes.items():
            share = min(size, -(-count * size // total)) if total else 0
            if share:
                wire = self.reader(index).wire
                wire.send(b"*1\r\n$9\r\nRANDOMKEY\r\n" * share)
                keys += [key for key in wire.read(share) if isinstance(key, bytes)]
        return list(dict.fromkeys(keys))
