"""A minimal stand-in for `redis-migrate sync`, speaking the run-dir protocol (sync-protocol.md) exactly.

For the live cutover tests while the real sync is not merged: copy every key (DUMP/RESTORE ABSTTL), follow
keyspace events of one standalone source (no scripts: CLIENT PAUSE WRITE would block EVAL), write sync.json
every 0.2 s, answer drain requests (PING on the subscriber: every event published before it has arrived),
and after flip.json route every change through migrate/sync/forward.py. SIGTERM: apply what was heard, exit 0.

    python tests/standin_sync.py --source URL --target URL --run-dir DIR
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from migrate.net.endpoints import Endpoint, discover  # noqa: E402
from migrate.rundir import RunDir  # noqa: E402
from migrate.sync.baseline import Baseline, digest  # noqa: E402
from migrate.sync.forward import Forwarder  # noqa: E402
from migrate.sync.protocol import DrainRequests, FlipLedger, SyncLedger  # noqa: E402

NAME = "redis-migrate-sync"


def named(client: redis.Redis) -> redis.Redis:
    """CLIENT SETNAME where allowed (a source that renamed CLIENT away refuses it)."""
    try:
        client.client_setname(NAME)
    except redis.ResponseError:
        pass
    return client


class StandIn:
    def __init__(self, source_url: str, target_url: str, run_dir: str) -> None:
        self.run_dir = RunDir(run_dir, create=True)
        self.source_endpoint = Endpoint.from_url("source", source_url)
        self.target_endpoint = Endpoint.from_url("target", target_url)
        self.source = named(redis.Redis(**self.source_endpoint.connection_kwargs(), single_connection_client=True))
        self.target = named(redis.Redis(**self.target_endpoint.connection_kwargs(), single_connection_client=True))
        self.baseline = Baseline(self.run_dir)
        self.run_dir.bind("source", {"url": self.source_endpoint.identity, "db": 0})
        self.run_dir.bind("target", {"url": self.target_endpoint.identity})
        self.ledger = SyncLedger.load(self.run_dir)
        self.drains = DrainRequests(self.run_dir)
        self.pending: dict[bytes, float] = {}
        self.lock = threading.Lock()
        self.pongs = 0
        self.stop = threading.Event()
        self.forwarder: Forwarder | None = None
        self.counts = {"applied": 0, "deleted": 0}
        self.changed: set[bytes] = set()
        self.last_event_at: float | None = None

    # --- capture ----------------------------------------------------------------------------------
    def subscribe(self) -> None:
        self.source.config_set("notify-keyspace-events", "KEA")
        self.pubsub = self.source.pubsub()
        self.pubsub.psubscribe("__keyspace@0__:*")
        while True:  # the subscription is confirmed before the copy starts
            message = self.pubsub.get_message(timeout=1)
            if message and message["type"] == "psubscribe":
                break
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self) -> None:
        while not self.stop.is_set():
            message = self.pubsub.get_message(timeout=0.05)
            if not message:
                continue
            if message["type"] == "pong":
                self.pongs += 1
                continue
            if message["type"] != "pmessage":
                continue
            key = message["channel"].split(b":", 1)[1]
            now = time.time()
            with self.lock:
                self.pending.setdefault(key, now)
            self.last_event_at = now

    def flush_subscriber(self) -> None:
        """Every event published before now has been heard once the PONG arrives."""
        before = self.pongs
        self.pubsub.ping()
        deadline = time.monotonic() + 5
        while self.pongs == before and time.monotonic() < deadline:
            time.sleep(0.001)

    # --- copy and apply -------------------------------------------------------------------------
    def copy(self) -> None:
        keys = list(dict.fromkeys(self.source.scan_iter(count=1000)))
        for start in range(0, len(keys), 500):
            self.apply(keys[start:start + 500])

    def read(self, keys: list[bytes]) -> list[tuple[bytes, bytes | None, int]]:
        pipe = self.source.pipeline(transaction=False)
        for key in keys:
            pipe.dump(key)
            pipe.pexpiretime(key)
        replies = pipe.execute()
        return [(key, replies[2 * i], replies[2 * i + 1]) for i, key in enumerate(keys)]

    def apply(self, keys: list[bytes]) -> None:
        if not keys:
            return
        states = self.read(keys)
        if self.forwarder is not None:
            for key, payload, expire_at in states:
                self.forwarder.apply_dump(key, payload, expire_at)
            self.counts["applied"] += len(states)
            return
        pipe = self.target.pipeline(transaction=False)
        for key, payload, expire_at in states:
            if payload is None:
                pipe.delete(key)
            else:
                pipe.restore(key, 0 if expire_at < 0 else expire_at, payload, replace=True, absttl=True)
        pipe.execute()
        self.baseline.record([(key, digest(payload, expire_at)) for key, payload, expire_at in states])
        self.counts["applied"] += len(states)
        self.changed.update(keys)

    def apply_pending(self) -> int:
        total = 0
        while True:
            with self.lock:
                keys = list(self.pending)[:500]
                for key in keys:
                    del self.pending[key]
            if not keys:
                return total
            self.apply(keys)
            total += len(keys)

    def recheck(self) -> list[bytes]:
        keys = list(self.changed)
        different = []
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            pipe = self.target.pipeline(transaction=False)
            for key in chunk:
                pipe.dump(key)
            target = pipe.execute()
            for (key, payload, _), theirs in zip(self.read(chunk), target):
                same = (payload is None and theirs is None) or (payload and theirs and payload[:-10] == theirs[:-10])
                if not same:
                    different.append(key)
        self.changed = set(different)
        return different

    # --- protocol -------------------------------------------------------------------------------
    def beat(self, state: str = "following") -> None:
        with self.lock:
            oldest = min(self.pending.values(), default=None)
            pending = len(self.pending)
        flipped = self.forwarder is not None
        counts = self.forwarder.counts if flipped else None
        self.ledger.update(pid=os.getpid(), heartbeat_at=time.time(), state=state,
                           phase=("forwarding" if flipped else "following") if state != "stopped" else "stopped",
                           lag_ms=0 if oldest is None else int((time.time() - oldest) * 1000), pending=pending,
                           applied=self.counts["applied"], deleted=0, gaps=0, unreconciled_gaps=0, reconciles=0,
                           last_event_at=self.last_event_at, last_old_write_at=self.last_event_at,
                           forwarded=counts.forwarded if counts else 0, conflicts=counts.conflicts if counts else 0,
                           proof={"verified_at": self.started, "holds": True, "changed_since": 0,
                                  "rechecked_equal": 0, "open": 0},
                           targets={"source": self.source_endpoint.redacted, "target": self.target_endpoint.redacted})

    def drain(self, request: dict) -> None:
        before = self.counts["applied"]
        self.flush_subscriber()
        self.apply_pending()
        different = self.recheck()
        self.drains.answer(request["id"], self.counts["applied"] - before, len(self.changed), len(different),
                           different)

    def run(self) -> int:
        self.started = time.time()
        self.ledger.update(pid=os.getpid(), started_at=self.started, heartbeat_at=time.time(), state="copying")
        self.subscribe()
        self.copy()
        self.changed = set()
        next_beat = 0.0
        while not self.stop.is_set():
            request = self.drains.pending()
            if request is not None:
                self.drain(request)
            if self.forwarder is None and FlipLedger.load(self.run_dir).flipped:
                self.forwarder = Forwarder(self.run_dir, discover(self.target_endpoint), self.baseline)
            self.apply_pending()
            if time.monotonic() >= next_beat:
                self.beat()
                next_beat = time.monotonic() + 0.2
            time.sleep(0.005)
        self.flush_subscriber()
        self.apply_pending()
        self.beat("stopped")
        return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--run-dir", required=True)
    args = parser.parse_args()
    standin = StandIn(args.source, args.target, args.run_dir)
    signal.signal(signal.SIGTERM, lambda *_: standin.stop.set())
    signal.signal(signal.SIGINT, lambda *_: standin.stop.set())
    return standin.run()


if __name__ == "__main__":
    sys.exit(main())
