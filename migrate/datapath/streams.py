"""A stream carried whole on the type-by-type path: entries, counters, groups, consumers and pending entries.

RESTORE carries a stream whole, but only into a target whose RDB version is at least the source's. Native
commands must rebuild the rest, and the recipe is (per target version):

1. XADD every entry with its ID. A pending entry whose entry was deleted (XDEL while it was pending) gets a
   placeholder entry with its ID, in ID order, because XCLAIM only claims an entry the stream holds.
2. XSETID last-id [ENTRIESADDED n MAXDELETEDID id] (7.0+), so that a group's ENTRIESREAD is within range.
3. XGROUP CREATE key group last-delivered [ENTRIESREAD n] (7.0+; BUSYGROUP on a replay is fine), then XGROUP
   SETID with the same, and XGROUP CREATECONSUMER for every consumer (those without pending entries too).
4. Every pending entry with its consumer, delivery time and count: XCLAIM key group consumer 0 id TIME <ms>
   RETRYCOUNT n FORCE JUSTID, in a guarded EVAL (one command per batch, which answers how many it claimed).
5. XDEL the placeholders, then XSETID again: the counters as the source has them.

A Redis 6.2 target has no entries-read, entries-added or max-deleted ID: those are left out, and the keys are
named in the summary (`not_held`), never silently. The source is read with XINFO STREAM FULL (groups,
consumers, pending entries with their delivery time and count), which Redis 6.2 has too; pending entries
past the first CHUNK_ITEMS of a group are paged with XPENDING (idle time turned into a delivery time by the
server's TIME).
"""

from __future__ import annotations

from collections.abc import Iterator

import redis

from ..net.wire import ReplyError, Wire, pack
from .segments import stream_groups

CHUNK_ITEMS = 1000
CLAIMS_PER_SCRIPT = 250  # 4 arguments each: under ElastiCache Serverless's 3,999 arguments per command
PLACEHOLDER = (b"__redis_migrate__", b"placeholder for a deleted entry still pending")
NOT_HELD = "stream entries-read/entries-added/max-deleted-id (the target is older than 7.0)"
BUSYGROUP = "BUSYGROUP"

# Claims pending entries for one group. Guarded: a claim the target ignored (an entry it does not hold) is an
# error reply naming the count, never a silent loss.
CLAIM_SCRIPT = b"""
local key, group = KEYS[1], ARGV[1]
local claimed = 0
for i = 2, #ARGV, 4 do
  local got = redis.call('XCLAIM', key, group, ARGV[i + 1], 0, ARGV[i], 'TIME', ARGV[i + 2],
                         'RETRYCOUNT', ARGV[i + 3], 'FORCE', 'JUSTID')
  claimed = claimed + #got
end
local wanted = (#ARGV - 1) / 4
if claimed ~= wanted then
  return redis.error_reply('ERR pending entries not held: claimed ' .. claimed .. ' of ' .. wanted)
end
return claimed
"""


def _as_map(flat: list) -> dict:
    return dict(zip(flat[0::2], flat[1::2]))


def _id(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def _text(value) -> bytes:
    """An optional counter as a record item: b"" where the source has none (Redis 6.2, or unknown)."""
    if value is None:
        return b""
    return value if isinstance(value, bytes) else b"%d" % value


# --- reading ---------------------------------------------------------------------------------------------

def read_stream(wire: Wire, key: bytes) -> Iterator[tuple[int, list, str]]:
    """The stream as records: entries (with placeholders), groups, pending entries, then the end record. None
    for a key gone since its type was read (the caller counts it as vanished)."""
    info = wire.call(b"XINFO", b"STREAM", key, b"FULL", b"COUNT", b"%d" % CHUNK_ITEMS, check=False)
    if isinstance(info, ReplyError):
        if "no such key" in str(info).lower():
            return
        raise redis.ResponseError(str(info))
    fields = _as_map(info)
    groups = [_as_map(group) for group in fields.get(b"groups") or []]
    pels = {group[b"name"]: list(_pending(wire, key, group)) for group in groups}
    waiting = sorted({_id(entry[0]): entry[0] for pel in pels.values() for entry in pel}.items(), reverse=True)
    placeholders: list[bytes] = []
    for items in _entries(wire, key, fields[b"last-generated-id"], waiting, placeholders):
        yield 0, items, "stream"
    counters = [fields[b"last-generated-id"], _text(fields.get(b"entries-added")),
                _text(fields.get(b"max-deleted-entry-id"))]
    items = list(counters)
    for group in groups:
        consumers = [_as_map(consumer)[b"name"] for consumer in group.get(b"consumers") or []]
        items += [group[b"name"], group[b"last-delivered-id"], _text(group.get(b"entries-read")),
                  b"%d" % len(consumers), *consumers]
    yield 0, items, "stream-groups"
    for name, pel in pels.items():
        for start in range(0, len(pel), CHUNK_ITEMS):
            yield 0, [name, *(x for entry in pel[start:start + CHUNK_ITEMS] for x in entry)], "stream-pel"
    yield 0, counters + placeholders, "stream-end"


def _pending(wire: Wire, key: bytes, group: dict) -> Iterator[tuple[bytes, bytes, bytes, bytes]]:
    """(id, consumer, delivery time ms, delivery count) of each pending entry: the first ones from XINFO
    STREAM FULL, the rest paged with XPENDING."""
    last = None
    for entry_id, consumer, delivered_at, count in group.get(b"pending") or []:
        yield entry_id, consumer, _text(delivered_at), _text(count)
        last = entry_id
    total = group.get(b"pel-count") or 0
    seen = len(group.get(b"pending") or [])
    while last is not None and seen < total:
        wire.send(pack(b"TIME") + pack(b"XPENDING", key, group[b"name"], b"(" + last, b"+", b"%d" % CHUNK_ITEMS))
        (seconds, micros), page = wire.read(2)
        if isinstance(page, ReplyError) or not page:
            return
        now = int(seconds) * 1000 + int(micros) // 1000
        for entry_id, consumer, idle, count in page:
            yield entry_id, consumer, b"%d" % (now - idle), _text(count)
        seen += len(page)
        last = page[-1][0]


def _entries(wire: Wire, key: bytes, last_id: bytes, waiting: list, placeholders: list[bytes]) -> Iterator[list[bytes]]:
    """XRANGE in windows up to `last_id` (the last-generated ID that XINFO read: entries added since then belong
    to a later state, and past it XSETID would refuse the counters), flattened as id, field count, fields;
    `waiting` (pending IDs, highest first) that the stream no longer holds come in as placeholders (field count
    0) at their place in ID order."""
    start = b"-"
    while True:
        entries = wire.call(b"XRANGE", key, start, last_id, b"COUNT", b"%d" % CHUNK_ITEMS)
        if not entries:
            break
        items: list[bytes] = []
        for entry_id, entry_fields in entries:
            if waiting:
                position = _id(entry_id)
                while waiting and waiting[-1][0] < position:
                    _placeholder(waiting.pop()[1], items, placeholders)
                if waiting and waiting[-1][0] == position:
                    waiting.pop()
            items += [entry_id, b"%d" % (len(entry_fields) // 2), *entry_fields]
        yield items
        start = b"(" + entries[-1][0]
    if waiting:
        items = []
        while waiting:
            _placeholder(waiting.pop()[1], items, placeholders)
        yield items


def _placeholder(entry_id: bytes, items: list[bytes], placeholders: list[bytes]) -> None:
    items += [entry_id, b"0"]
    placeholders.append(entry_id)


# --- writing ---------------------------------------------------------------------------------------------

def entries_commands(key: bytes, items: list[bytes], tolerate: bool) -> list[tuple[bytes, bool | str]]:
    """XADD each entry with its ID; a placeholder (0 fields) gets a marker field, deleted at the end."""
    commands, pos = [], 0
    while pos < len(items):
        entry_id, field_count = items[pos], int(items[pos + 1])
        fields = items[pos + 2:pos + 2 + 2 * field_count] or PLACEHOLDER
        commands.append((pack(b"XADD", key, entry_id, *fields), tolerate))
        pos += 2 + 2 * field_count
    return commands


def _setid(key: bytes, counters: list[bytes], counted: bool) -> bytes:
    last_id, added, max_deleted = counters
    extra = []
    if counted and added:
        extra += [b"ENTRIESADDED", added]
        if max_deleted:
            extra += [b"MAXDELETEDID", max_deleted]
    return pack(b"XSETID", key, last_id, *extra)


def groups_commands(key: bytes, items: list[bytes], counted: bool) -> list[tuple[bytes, bool | str]]:
    """The counters, then every group at its last-delivered ID (and entries-read where the target has it) with
    every consumer. MKSTREAM and a temporary group keep a stream with no entries (or no groups) in existence."""
    counters, groups = stream_groups(items)
    commands: list[tuple[bytes, bool | str]] = [
        (pack(b"XGROUP", b"CREATE", key, b"__redis_migrate__", b"$", b"MKSTREAM"), False),
        (pack(b"XGROUP", b"DESTROY", key, b"__redis_migrate__"), False),
        (_setid(key, list(counters), counted), False)]
    for name, last_delivered, entries_read, consumers in groups:
        read = [b"ENTRIESREAD", entries_read] if counted and entries_read else []
        commands.append((pack(b"XGROUP", b"CREATE", key, name, last_delivered, *read), BUSYGROUP))
        commands.append((pack(b"XGROUP", b"SETID", key, name, last_delivered, *read), False))
        commands += [(pack(b"XGROUP", b"CREATECONSUMER", key, name, consumer), False) for consumer in consumers]
    return commands


def pel_commands(key: bytes, items: list[bytes]) -> list[tuple[bytes, bool | str]]:
    """Pending entries of one group, claimed in guarded EVALs of at most CLAIMS_PER_SCRIPT entries."""
    group, entries = items[0], items[1:]
    step = 4 * CLAIMS_PER_SCRIPT
    return [(pack(b"EVAL", CLAIM_SCRIPT, b"1", key, group, *entries[start:start + step]), False)
            for start in range(0, len(entries), step)]


def end_commands(key: bytes, items: list[bytes], counted: bool) -> list[tuple[bytes, bool | str]]:
    """Placeholders deleted, then the counters as the source has them (XDEL moved the max-deleted ID)."""
    placeholders = items[3:]
    commands = [(pack(b"XDEL", key, *placeholders[start:start + CHUNK_ITEMS]), False)
                for start in range(0, len(placeholders), CHUNK_ITEMS)]
    return commands + [(_setid(key, items[:3], counted), False)]


def loses_counters(record_type: str, items: list[bytes]) -> bool:
    """Whether this record holds counters a target before 7.0 cannot hold (entries-added, entries-read)."""
    if record_type != "stream-groups":
        return False
    counters, groups = stream_groups(items)
    return bool(counters[1]) or any(entries_read for _, _, entries_read, _ in groups)
