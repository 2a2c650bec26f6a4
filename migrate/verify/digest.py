"""The canonical digest of a key's logical value: the same for any encoding, RDB version or server.

DUMP bytes cannot serve: a hashtable set or hash dumps in the order of a per-process hash seed,
and the RDB version differs between servers. So each type is digested from typed reads, fed in
chunks (a window of a big key, or one struct record of a dump) so that no value is ever held
whole, and the result never depends on where the chunks were cut:

    string  the bytes, streamed
    list    the sequence of element digests, streamed in order
    set     count + sum mod 2**128 of member digests (order-independent, so SSCAN order is fine)
    hash    count + sum of field/value digests (the field digest seeds the value's)
    zset    count + sum of member digests seeded with the score's IEEE double. Scores are compared
            as the double the server stores, parsed from its reply: Redis 6.2/7.0 print %.17g
            ("0.10000000000000001"), Redis 7.2+ and Valkey the shortest form ("0.1"); the value
            is the same, the text is not. A change of 1e-9 changes the double.
    stream  entries in ID order (id, field count, fields and values), then consumer groups sorted
            by name with their last-delivered-id (and entries-read where both sides keep it: Redis 6.2
            does not), their consumers' names and pending entries (id, consumer, delivery count; not the
            idle time, which runs on), then the last generated ID (and entries-added, max-deleted ID)
    other   (module types) the DUMP payload without its RDB version and CRC footer: best effort

Each digest is seeded with its type, so an empty list and an empty set differ.
"""

from __future__ import annotations

import struct
from functools import partial

from xxhash import xxh3_64, xxh3_64_digest, xxh3_64_intdigest, xxh3_128_intdigest

from ..net.rdb import payload_body

MASK128 = (1 << 128) - 1
# Each digest is seeded with its type's code, and full scans spill keys with it. A code changes every digest:
# append only, never reorder. It is not datapath/segments.py's CHUNK_TYPES, the type byte of a struct
# record on disk (which has stream-group, a record kind, and neither "none" nor "other").
DIGEST_TYPES = ("none", "string", "list", "set", "zset", "hash", "stream", "other")
DIGEST_TYPE_CODE = {name: code for code, name in enumerate(DIGEST_TYPES)}
_COUNT_SUM = struct.Struct("<Q16s")


_SEED = DIGEST_TYPE_CODE


def _set_sum(members: list[bytes]) -> list[int]:
    return list(map(xxh3_128_intdigest, members))


def _hash_sum(flat: list[bytes]) -> list[int]:
    """`flat` is field, value, field, value... as HGETALL/HSCAN return them."""
    return list(map(xxh3_128_intdigest, flat[1::2], map(xxh3_64_intdigest, flat[0::2])))


def _zset_sum(flat: list[bytes]) -> list[int]:
    """`flat` is member, score, member, score... with scores as the server's strings."""
    scores = flat[1::2]
    seeds = struct.unpack(f"<{len(scores)}Q", struct.pack(f"<{len(scores)}d", *map(float, scores)))
    return list(map(xxh3_128_intdigest, flat[0::2], seeds))


def _finish_sum(type_name: str, count: int, total: int) -> int:
    return xxh3_64_intdigest(_COUNT_SUM.pack(count, (total & MASK128).to_bytes(16, "little")), _SEED[type_name])


# One-shot digests of a whole small value, equal to what the streaming classes below give.
digest_string = partial(xxh3_64_intdigest, seed=_SEED["string"])  # digest_string(value): in C, no Python frame


def digest_list(items: list[bytes]) -> int:
    return xxh3_64_intdigest(b"".join(map(xxh3_64_digest, items)), _SEED["list"])


def digest_set(members: list[bytes]) -> int:
    return _finish_sum("set", len(members), sum(map(xxh3_128_intdigest, members)))  # _set_sum, with no list


def digest_hash(flat: list[bytes]) -> int:
    return _finish_sum("hash", len(flat) // 2, sum(map(xxh3_128_intdigest, flat[1::2],
                                                       map(xxh3_64_intdigest, flat[0::2]))))  # _hash_sum


def digest_zset(flat: list[bytes]) -> int:
    return _finish_sum("zset", len(flat) // 2, sum(_zset_sum(flat)))


class StringDigest:
    def __init__(self) -> None:
        self._h = xxh3_64(seed=_SEED["string"])
        self.length = 0

    def update(self, chunk: bytes) -> None:
        self._h.update(chunk)
        self.length += len(chunk)

    def intdigest(self) -> int:
        return self._h.intdigest()


class ListDigest:
    def __init__(self) -> None:
        self._h = xxh3_64(seed=_SEED["list"])
        self.length = 0

    def update(self, items: list[bytes]) -> None:
        self._h.update(b"".join(map(xxh3_64_digest, items)))
        self.length += len(items)

    def intdigest(self) -> int:
        return self._h.intdigest()


class _SumDigest:
    """Order-independent: a sum of element digests. `dedupe` drops elements seen in an earlier
    window, because HSCAN/SSCAN may return an element twice across calls (never within one)."""

    type = "other"
    _elements = staticmethod(_set_sum)

    def __init__(self, dedupe: bool = False) -> None:
        self._sum = 0
        self.length = 0
        self._seen: set[int] | None = set() if dedupe else None

    def update(self, chunk: list[bytes]) -> None:
        digests = self._elements(chunk)
        if self._seen is not None:
            digests = [d for d in digests if d not in self._seen]
            self._seen.update(digests)
        self._sum += sum(digests)
        self.length += len(digests)

    def intdigest(self) -> int:
        return _finish_sum(self.type, self.length, self._sum)


class SetDigest(_SumDigest):
    type = "set"


class HashDigest(_SumDigest):
    type = "hash"
    _elements = staticmethod(_hash_sum)


class ZsetDigest(_SumDigest):
    type = "zset"
    _elements = staticmethod(_zset_sum)


class StreamDigest:
    def __init__(self) -> None:
        self._entries = xxh3_64(seed=_SEED["stream"])
        self._groups: dict[bytes, bytes] = {}
        self._consumers: dict[bytes, list[bytes]] = {}
        self._pending = 0
        self._tail = b""
        self.length = 0
        self.last_id = b""

    def update(self, entries: list) -> None:
        """`entries` as XRANGE returns them: [[id, [field, value, ...]], ...]."""
        tokens: list[bytes] = []
        for entry_id, fields in entries:
            tokens.append(entry_id)
            tokens.append(b"%d" % len(fields))
            tokens.extend(fields)
        self._entries.update(b"".join(map(xxh3_64_digest, tokens)))
        self.length += len(entries)
        if entries:
            self.last_id = entries[-1][0]

    def add_group(self, name: bytes, last_delivered_id: bytes, entries_read: bytes = b"") -> None:
        self._groups[name] = last_delivered_id + b"/" + entries_read if entries_read else last_delivered_id

    def add_consumers(self, group: bytes, names: list[bytes]) -> None:
        self._consumers.setdefault(group, []).extend(names)

    def add_pending(self, group: bytes, entries: list[tuple[bytes, bytes, object]]) -> None:
        """(id, consumer, delivery count) of pending entries, in any order and any number of calls."""
        self._pending += sum(xxh3_128_intdigest(b"\x00".join((group, entry_id, consumer, b"%d" % int(count))))
                             for entry_id, consumer, count in entries)

    def set_last_id(self, last_id: bytes, entries_added: bytes = b"", max_deleted: bytes = b"") -> None:
        self._tail = b"\x00".join((last_id, entries_added, max_deleted))

    def intdigest(self) -> int:
        groups = xxh3_64(seed=_SEED["stream"])
        for name in sorted(self._groups):
            consumers = b"".join(map(xxh3_64_digest, sorted(set(self._consumers.get(name, ())))))
            groups.update(xxh3_64_digest(name) + xxh3_64_digest(self._groups[name]) + consumers)
        rest = (self._pending & MASK128).to_bytes(16, "little") + xxh3_64_digest(self._tail)
        return xxh3_64_intdigest(self._entries.digest() + groups.digest() + rest, _SEED["stream"])


class OtherDigest:
    """Module types have no typed read; their DUMP payload is all there is (without the footer,
    which holds the RDB version)."""

    def __init__(self) -> None:
        self._value = 0
        self.length = 0

    def update(self, payload: bytes) -> None:
        self._value = xxh3_64_intdigest(payload_body(payload), _SEED["other"])
        self.length = len(payload)

    def intdigest(self) -> int:
        return self._value


DIGESTS = {"string": StringDigest, "list": ListDigest, "set": SetDigest, "hash": HashDigest,
           "zset": ZsetDigest, "stream": StreamDigest, "other": OtherDigest}


def new_digest(type_name: str, dedupe: bool = False):
    """An empty digest for a type; `dedupe` for set/hash read in several SCAN calls."""
    cls = DIGESTS[type_name]
    return cls(dedupe) if issubclass(cls, _SumDigest) else cls()
