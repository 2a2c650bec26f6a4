"""Capture: keyspace events from every source primary, subscribed before the bulk copy starts.

One pub/sub connection per primary PSUBSCRIBEs `__keyspace@<db>__:*`; a thread per connection reads the
messages and hands each key to the engine (follow.py). A dropped connection (the server also drops one
that passes `client-output-buffer-limit pubsub`) is re-subscribed first, then reported as a gap, so the
reconcile that follows starts after events flow again.

Notifications: `notify-keyspace-events` must hold K (keyspace channel: the key name) and A (every
class of command: generic, string, list, set, hash, zset, stream, expired x, evicted e...). E (keyevent
channel) is not needed: the keyspace channel names the key, and the event name is not used beyond
telling a probe's events apart, since every change is re-read from the source.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import redis

from ..backoff import Backoff
from ..errors import BadInput, MigrateError
from ..net.endpoints import Node, Topology
from ..net.keyspace import SLOT_COUNT, key_slot
from ..net.wire import ReplyError, Wire, pack
from ..rundir import Ledger, RunDir

CLIENT_NAME = b"redis-migrate-sync"
PROBE_PREFIX = b"redis-migrate:probe:"
NEEDED_FLAGS = "KA"
A_CLASSES = set("g$lshzxetd")  # what A stands for in notify-keyspace-events
PROBE_WAIT_S = 2.0
READ_TIMEOUT_S = 0.2

SETTING_HINT = ("set the source's `notify-keyspace-events` to `KA` (on ElastiCache: in the cluster's parameter group, "
                "notify-keyspace-events = KA; on a self-managed Redis, rerun with --enable-notifications or "
                "CONFIG SET notify-keyspace-events KA). K publishes every change on the key's own channel; A covers "
                "every command class, expired (x) and evicted (e) keys included; E (keyevent channel) is not needed")


def named(wire: Wire) -> Wire:
    """Name the connection so that cutover counts it as ours, not as an application client."""
    wire.call(b"CLIENT", b"SETNAME", CLIENT_NAME, check=False)
    return wire


def covers(flags: str) -> bool:
    """Whether a notify-keyspace-events value publishes every change on the keyspace channel."""
    return "K" in flags and ("A" in flags or A_CLASSES <= set(flags))


def merged(flags: str) -> str:
    """The old flags plus K and A."""
    return flags + "".join(flag for flag in NEEDED_FLAGS if flag not in flags)


def probe_key(node: Node) -> bytes:
    """A fresh probe key whose slot this node owns (a hash tag picks the slot)."""
    owned = node.slots or ((0, SLOT_COUNT - 1),)
    base = PROBE_PREFIX + uuid.uuid4().hex.encode()
    for suffix in range(100_000):
        key = base + b":{%d}" % suffix
        slot = key_slot(key)
        if any(start <= slot <= end for start, end in owned):
            return key
    raise MigrateError(f"no probe key found for node {node.name}")


# --- notify-keyspace-events: read, set, restored at the end (or by the next run after a crash) --------

class NotificationsLedger(Ledger):
    """notifications.json: per node, the notify-keyspace-events value sync replaced (restored at exit)."""

    NAME = "notifications"

    def _empty(self) -> dict:
        return {"nodes": {}}

    @property
    def changed(self) -> dict[str, str]:
        return dict(self._data["nodes"])

    def remember(self, node: str, old: str) -> None:
        """Record the old value BEFORE it is changed: a crash after the change still knows it."""
        self._data["nodes"].setdefault(node, old)
        self.save()

    def restored(self, node: str) -> None:
        self._data["nodes"].pop(node, None)
        if self._data["nodes"]:
            self.save()
        else:
            self.forget()


def config_flags(client: redis.Redis) -> str | None:
    try:
        value = client.config_get("notify-keyspace-events")
    except redis.ResponseError:
        return None  # CONFIG is disabled (ElastiCache renames it away)
    return value.get("notify-keyspace-events")


def restore_notifications(run_dir: RunDir, topology: Topology) -> list[str]:
    """Put back every value a (possibly crashed) sync recorded; the nodes it could not reach stay recorded."""
    ledger = NotificationsLedger.load(run_dir)
    left = []
    for name, old in ledger.changed.items():
        host, _, port = name.rpartition(":")
        try:
            topology.endpoint.node_client(host, int(port)).config_set("notify-keyspace-events", old)
            ledger.restored(name)
        except (redis.RedisError, OSError):
            left.append(name)
    return left


def enable_notifications(run_dir: RunDir, topology: Topology, node: Node, restore: bool = True) -> bool:
    """CONFIG SET the flags K and A into the node's value, recording the old value first (unless `restore` is
    False: then nothing is recorded, so no sync puts it back). True when the value was changed."""
    client = topology.client(node)
    old = config_flags(client)
    if old is None:
        raise BadInput(f"keyspace notifications are off on source {node.name} and CONFIG is not allowed there "
                       "(ElastiCache?), so --enable-notifications cannot turn them on", SETTING_HINT)
    if covers(old):
        return False
    if restore:
        NotificationsLedger.load(run_dir).remember(node.name, old)
    try:
        client.config_set("notify-keyspace-events", merged(old))
    except redis.ResponseError as exc:
        NotificationsLedger.load(run_dir).restored(node.name)
        raise BadInput(f"source {node.name} refused CONFIG SET notify-keyspace-events ({exc})", SETTING_HINT) from None
    return True


# --- one subscriber per primary ------------------------------------------------------------------------

class Subscriber:
    """A pub/sub connection on one primary and the thread reading it.

    `on_key(index, key, event)` gets every key event; `on_gap(index, why)` a dropped connection, called
    after the re-subscription. `flush()` PINGs through the connection and waits for the PONG: the server
    answers it after every message published before, so all those were handed over when it returns."""

    def __init__(self, topology: Topology, index: int, db: int, on_key: Callable[[int, bytes, bytes], None],
                 on_gap: Callable[[int, str], None]) -> None:
        self.topology = topology
        self.node = topology.masters[index]
        self.index = index
        self.prefix = b"__keyspace@%d__:" % db
        self.on_key = on_key
        self.on_gap = on_gap
        self.wire: Wire | None = None
        self.stopping = threading.Event()
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._ping_sent: dict[bytes, threading.Event] = {}
        self._ping_todo: list[bytes] = []
        self.thread = threading.Thread(target=self._run, name=f"sync-capture-{index}", daemon=True)
        self.error: BaseException | None = None

    def connect(self) -> None:
        wire = named(Wire(self.topology.endpoint, self.node.host, self.node.port))
        wire.send(pack(b"PSUBSCRIBE", self.prefix + b"*"))
        reply = wire.read(1)[0]
        if isinstance(reply, ReplyError):
            wire.close()
            raise BadInput(f"source {self.node.name} refused PSUBSCRIBE: {reply}",
                           "the source user needs the +psubscribe command and access to the __keyspace@* channels")
        wire.sock.settimeout(READ_TIMEOUT_S)
        self.wire = wire

    def start(self) -> None:
        self.connect()
        self.thread.start()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """True once every message published before this call was handed over."""
        token = uuid.uuid4().hex.encode()
        done = threading.Event()
        with self._lock:
            self._ping_sent[token] = done
            self._ping_todo.append(token)
        return done.wait(timeout_s) or self.closed.is_set()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        if self.wire is not None:
            self.wire.close()

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    self._read_some()
                except (OSError, ConnectionError):
                    if self.stopping.is_set():
                        break
                    self._resubscribe()
        except BaseException as exc:  # noqa: BLE001 - handed to the engine, which stops with it
            self.error = exc
            self.on_gap(self.index, f"subscriber failed: {exc}")
        finally:
            self.closed.set()
            self._release_pings()

    def _read_some(self) -> None:
        self._send_pings()
        try:
            message = self.wire.read(1)[0]
        except TimeoutError:
            return
        if not isinstance(message, list) or not message:
            return
        kind = message[0]
        if kind == b"pmessage" and len(message) == 4:
            channel = message[2]
            if channel.startswith(self.prefix):
                self.on_key(self.index, channel[len(self.prefix):], message[3])
        elif kind == b"pong" and len(message) == 2:
            with self._lock:
                done = self._ping_sent.pop(message[1], None)
            if done is not None:
                done.set()

    def _send_pings(self) -> None:
        with self._lock:
            todo, self._ping_todo = self._ping_todo, []
        for token in todo:
            self.wire.send(pack(b"PING", token))

    def _resubscribe(self) -> None:
        """Connect and subscribe again (retrying while the node restarts), then report the gap."""
        if self.wire is not None:
            self.wire.close()
        backoff = Backoff(3600)
        while not self.stopping.is_set():
            try:
                self.connect()
                break
            except (OSError, ConnectionError, MigrateError, redis.RedisError):
                backoff.wait()
        with self._lock:
            self._ping_todo = list(self._ping_sent)  # pings lost with the old connection: send them again
        self.on_gap(self.index, f"subscriber connection to {self.node.name} dropped")

    def _release_pings(self) -> None:
        with self._lock:
            for done in self._ping_sent.values():
                done.set()
            self._ping_sent.clear()


def probe(topology: Topology, index: int, db: int, seen: Callable[[bytes], bool]) -> bool:
    """Write a probe key that expires at once and wait up to 2 s for its events; `seen(key)` tells whether
    the subscriber got one for it. Reading the key after its expiry makes the server expire it then."""
    node = topology.masters[index]
    key = probe_key(node)
    client = topology.client(node, db)
    client.set(key, b"probe", px=50)
    deadline = time.monotonic() + PROBE_WAIT_S
    while time.monotonic() < deadline:
        time.sleep(0.06)
        client.exists(key)
        if seen(key):
            return True
    client.delete(key)
    return False
