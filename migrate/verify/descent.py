"""Descent: from the slots whose digests differ down to the keys that differ.

The full pass (fullscan.py) keeps nothing per key. Where a slot's digests differ between the two
sides, just that slot is read again, on both sides, key by key:

- on a cluster node, CLUSTER COUNTKEYSINSLOT + CLUSTER GETKEYSINSLOT name the slot's keys (no SCAN);
- on a standalone node (no slot commands), or a node that refuses them, one SCAN of the node keeps
  only the names whose slot is wanted.

Each key named on either side is then read on both (type, expiry, canonical digest) and compared as
today's verify compares keys. The per-key map exists only for the slots being compared, and they are
taken in groups of at most GROUP_KEYS keys (by the full pass's counts), so memory stays bounded when
many slots differ; on a standalone side each group costs one more SCAN of the names. What stays in
memory after a group is only what differs (the candidates), as the report will list them anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..batches import budgeted
from ..net.endpoints import Topology, translated_errors
from ..net.keyspace import key_slot, key_slots
from ..net.wire import ReplyError, Wire, pack
from .compare import compare_views
from .readers import NO_DETAIL, Detail, DigestReader, View
from .slotdigest import SlotDigests

GROUP_KEYS = 100_000   # keys (on the larger side) whose views one group holds
SCAN_COUNT = 5000      # names per SCAN call when a standalone node is filtered by slot
READ_BATCH = 1000
SLOT_SLACK = 16        # names asked beyond a slot's COUNTKEYSINSLOT: room for keys written in between


class SlotLister:
    """Names the keys of given slots on one side, master by master, and reads them there."""

    def __init__(self, topology: Topology, db: int = 0, detail: Detail = NO_DETAIL) -> None:
        self.topology = topology
        self.detail = detail
        self.db = db
        self._owners = topology.slot_owners()
        self._readers: dict[int, DigestReader] = {}
        self._slot_commands = topology.is_cluster and db == 0  # other databases: SCAN (their slot commands vary)

    def _reader(self, index: int) -> DigestReader:
        if index not in self._readers:
            node = self.topology.masters[index]
            self._readers[index] = DigestReader(Wire(self.topology.endpoint, node.host, node.port, self.db),
                                                self.topology.has_pexpiretime, detail=self.detail)
        return self._readers[index]

    def keys(self, slots: Iterable[int]) -> Iterator[list[bytes]]:
        """The names in these slots, in lists (per master, per SCAN call); a name may come twice."""
        by_master: dict[int, list[int]] = {}
        for slot in slots:
            by_master.setdefault(self._owners[slot], []).append(slot)
        with translated_errors(self.topology.endpoint):
            for index, owned in sorted(by_master.items()):
                wire = self._reader(index).wire
                named = self._in_slots(wire, owned) if self._slot_commands else None
                if named is None:
                    yield from self._scanned(wire, set(owned))
                else:
                    yield named

    def read(self, keys: Iterable[bytes]) -> dict[bytes, View]:
        """key -> View, ABSENT where the key does not exist."""
        by_master: dict[int, list[bytes]] = {}
        for key in keys:
            by_master.setdefault(self._owners[key_slot(key)], []).append(key)
        views: dict[bytes, View] = {}
        with translated_errors(self.topology.endpoint):
            for index, group in by_master.items():
                reader = self._reader(index)
                for start in range(0, len(group), READ_BATCH):
                    chunk = group[start:start + READ_BATCH]
                    views.update(zip(chunk, reader.read(chunk)))
        return views

    def _in_slots(self, wire: Wire, slots: list[int]) -> list[bytes] | None:
        """CLUSTER GETKEYSINSLOT for each slot (sized by COUNTKEYSINSLOT); None where refused.

        A count is only a starting size: the side may take writes between the two round trips (sync's
        follower writes the target while a reconcile runs), and GETKEYSINSLOT returns at most `count`
        names, so a capped reply could leave out a key that was there all along, such as a target-only
        key after a FLUSHDB on the source, which no other listing names and which is then never deleted.
        So each slot is asked for more than its count, and asked again (twice as many) while a reply fills
        what was asked: every key present throughout is named."""
        wire.send(b"".join(pack(b"CLUSTER", b"COUNTKEYSINSLOT", b"%d" % slot) for slot in slots))
        counts = wire.read(len(slots))
        if any(isinstance(count, ReplyError) for count in counts):
            self._slot_commands = False
            return None
        asked = {slot: count + SLOT_SLACK for slot, count in zip(slots, counts)}
        named: dict[int, list[bytes]] = {}
        while asked:
            order = list(asked.items())
            wire.send(b"".join(pack(b"CLUSTER", b"GETKEYSINSLOT", b"%d" % slot, b"%d" % count)
                               for slot, count in order))
            replies = wire.read(len(order))
            if any(isinstance(reply, ReplyError) for reply in replies):
                self._slot_commands = False
                return None
            named.update((slot, reply) for (slot, _), reply in zip(order, replies))
            asked = {slot: count * 2 for (slot, count), reply in zip(order, replies) if len(reply) >= count}
        return [key for reply in named.values() for key in reply]

    @staticmethod
    def _scanned(wire: Wire, wanted: set[int]) -> Iterator[list[bytes]]:
        """One SCAN of the node, keeping the names whose slot is wanted."""
        cursor = b"0"
        while True:
            cursor, names = wire.call(b"SCAN", cursor, b"COUNT", b"%d" % SCAN_COUNT)
            if names:
                yield [name for name, slot in zip(names, key_slots(names)) if slot in wanted]
            if cursor == b"0":
                return

    def close(self) -> None:
        for reader in self._readers.values():
            reader.wire.close()
        self._readers.clear()


def groups(slots: list[int], sizes: Iterable[SlotDigests], limit: int | None = None) -> Iterator[list[int]]:
    """The slots in groups of at most `limit` (GROUP_KEYS) keys on the larger side (a bigger slot goes alone)."""
    sizes = list(sizes)
    return budgeted(slots, lambda slot: max(digests.keys_in(slot) for digests in sizes), limit or GROUP_KEYS)


@dataclass
class Found:
    """What descent found: keys that differ (both views), and keys gone from both sides meanwhile."""

    candidates: dict[bytes, tuple[View, View]] = field(default_factory=dict)
    expired: int = 0
    vanished: int = 0


def descend(reference: SlotLister, target: SlotLister, slots: list[int], digests: dict[str, SlotDigests],
            tolerance_ms: int) -> Found:
    """The keys that differ in these slots, with both views. Each slot's counts in `digests` are
    replaced by those of the keys read one by one (a key SCAN returned twice counts once). A slot that
    differed in the full pass and holds no difference now lost keys in between (most often a TTL that
    fell due between the two sides' reads): they are counted as expired (with a TTL) or vanished."""
    found = Found()
    for group in groups(slots, digests.values()):
        named: dict[bytes, None] = {}
        for side in (reference, target):
            for names in side.keys(group):
                named.update(dict.fromkeys(names))
        ref, tgt = reference.read(named), target.read(named)
        before = {side: {slot: digests[side].census(slot) for slot in group} for side in digests}
        recount_group(digests["source"], group, ref)
        recount_group(digests["target"], group, tgt)
        candidates = compare_views(ref, tgt, tolerance_ms)
        found.candidates.update(candidates)
        _gone(found, set(group) - {key_slot(key) for key in candidates}, before, digests)
    return found


def _gone(found: Found, settled_slots: set[int], before: dict[str, dict[int, tuple[int, int]]],
          digests: dict[str, SlotDigests]) -> None:
    """Keys the full pass saw in a slot that is now equal, and that are gone: per slot, the larger
    drop of either side, with and without a TTL."""
    for slot in settled_slots:
        drops = []
        for side, slot_digests in digests.items():
            keys, with_ttl = slot_digests.census(slot)
            drops.append((max(before[side][slot][1] - with_ttl, 0),
                          max((before[side][slot][0] - before[side][slot][1]) - (keys - with_ttl), 0)))
        found.expired += max(drop[0] for drop in drops)
        found.vanished += max(drop[1] for drop in drops)


def recount_group(digests: SlotDigests, group: list[int], views: dict[bytes, View]) -> None:
    """A group's slot counts from its keys read one by one (a key folded twice counts once)."""
    by_slot: dict[int, list[View]] = {slot: [] for slot in group}
    for key, view in views.items():
        by_slot[key_slot(key)].append(view)
    for slot, slot_views in by_slot.items():
        digests.recount(slot, slot_views)
