"""Gaps: moments when events may have been lost. Each one is counted and closed by a reconcile.

Kinds: a subscriber connection dropped (the server also drops it at `client-output-buffer-limit pubsub`),
the pending set passed its bound, a primary failed over or the slot map changed, and FLUSHDB/FLUSHALL,
which publish no key events: seen as a DBSIZE drop that the deletions heard cannot explain.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import AuthenticationFailed, BadInput, Unreachable
from ..net.endpoints import Topology, discover
from ..net.wire import ReplyError, Wire, pack

DBSIZE_EVERY_S = 0.5
TOPOLOGY_EVERY_S = 2.0
DELETING_EVENTS = frozenset((b"del", b"expired", b"evicted", b"rename_from", b"move_from", b"unlink"))


@dataclass
class GapBook:
    """Gaps seen, gaps a reconcile still has to close, and why (thread-safe)."""

    gaps: int = 0
    open: int = 0
    reasons: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, reason: str) -> None:
        with self.lock:
            self.gaps += 1
            self.open += 1
            self.reasons = (self.reasons + [reason])[-20:]

    def claim(self) -> int:
        """The open gaps a reconcile starting now covers."""
        with self.lock:
            return self.open

    def close(self, covered: int) -> None:
        with self.lock:
            self.open = max(self.open - covered, 0)


class FlushWatch:
    """DBSIZE of each primary every 0.5 s: a drop larger than the deletions heard meanwhile is a flush.

    A drop is confirmed at the next look (the deletions heard by then included), so a burst of DELs whose
    events are still on their way is not taken for a flush. `wire(index)` gives a connection to primary
    `index`; `lost()` drops them after a connection error."""

    def __init__(self, count: int, wire: Callable[[int], Wire], lost: Callable[[], None],
                 watched: list[int] | None = None) -> None:
        self.wire = wire
        self.watched = list(range(count)) if watched is None else watched  # --slots: the primaries followed
        self.lost = lost
        self.count = count
        self.base: list[int | None] = [None] * count      # the size at the last look that raised no doubt
        self.deletes = [0] * count                         # deletions heard since that look
        self.suspect = [False] * count
        self.lock = threading.Lock()
        self.due = 0.0

    def heard_delete(self, index: int) -> None:
        with self.lock:
            if index < len(self.deletes):
                self.deletes[index] += 1

    def check(self) -> list[int]:
        """The primaries whose keys vanished without events."""
        now = time.monotonic()
        if now < self.due:
            return []
        self.due = now + DBSIZE_EVERY_S
        flushed = []
        for index in self.watched:
            try:
                wire = self.wire(index)
                wire.send(pack(b"DBSIZE"))
                size = wire.read(1)[0]
            except (OSError, ConnectionError, Unreachable):
                self.lost()  # a restarted node shows as a drop at the next look, if it lost keys
                continue
            if not isinstance(size, ReplyError) and self._look(index, size):
                flushed.append(index)
        return flushed

    def _look(self, index: int, size: int) -> bool:
        with self.lock:
            before, heard = self.base[index], self.deletes[index]
            if before is not None and self._unexplained(before, size, heard):
                if not self.suspect[index]:
                    self.suspect[index] = True  # keep the base and the count: decide at the next look
                    return False
                flushed = True
            else:
                flushed = False
            self.base[index], self.deletes[index], self.suspect[index] = size, 0, False
            return flushed

    @staticmethod
    def _unexplained(before: int, after: int, heard: int) -> bool:
        drop = before - after - heard
        return drop > max(16, before // 20) or (after == 0 and before > heard)


class TopologyWatch:
    """The source's primaries and slot ranges, rediscovered every 2 s: a change is a failover or a reshard."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.due = time.monotonic() + TOPOLOGY_EVERY_S
        self.broken = False  # seen as a replica or with uncovered slots since the last good look

    @staticmethod
    def shape(topology: Topology) -> list:
        return [(node.host, node.port, node.slots) for node in topology.masters]

    def check(self) -> Topology | None:
        """The new topology when it changed (None when not, or when it cannot be read right now)."""
        now = time.monotonic()
        if now < self.due:
            return None
        self.due = now + TOPOLOGY_EVERY_S
        try:
            found = discover(self.topology.endpoint)
        except (Unreachable, AuthenticationFailed):  # a node restarting: its subscriber reports the gap
            return None
        except BadInput:  # the primary became a replica, or slots are uncovered: a failover under way
            self.broken = True
            return None
        except Exception:  # noqa: BLE001 - a node restarting: the subscriber reports it
            return None
        if self.shape(found) == self.shape(self.topology) and not self.broken:
            return None
        self.broken = False
        self.topology = found
        return found
