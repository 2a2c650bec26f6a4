"""The `sync` stage: capture first, bulk copy, prove, then follow every change until SIGTERM/SIGINT.

    1. subscribe to keyspace events on every source primary and probe each (capture.py);
    2. the bulk copy (dump + replay in this run dir), skipped when the run dir's copy is done;
    3. apply what changed meanwhile, then the proof pass: a verify with repair of the whole source,
       run beside the follower (keys the follower wrote meanwhile are re-read after it);
    4. follow (follow.py) until stopped; a gap (gaps.py) starts a reconcile, which is the same verify;
    5. stop: PING each subscriber (its PONG comes after every earlier event), apply everything, exit 0,
       or 3 while a gap is unreconciled.

The state goes to sync.json about every 0.5 s (protocol.SyncLedger), which `status` shows; cutover
talks to the running sync through the run dir (protocol.py: drain requests, the flip).
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from ..backoff import Backoff
from ..datapath.reader import DumpOptions
from ..datapath.replay import ReplayOptions
from ..errors import BadInput, MigrateError, RuntimeFailure, Unreachable
from ..events import ProgressFactory, Warn, no_progress, no_warning
from ..keynames import readable
from ..net.endpoints import Topology, translated_errors
from ..rundir import DumpLedger, ReplayLedger, RunDir
from ..verify.compare import EXPIRED, classify, now_ms
from ..verify.readers import SideReader
from . import capture
from .baseline import Baseline
from .follow import DEFAULT_MAX_PENDING, Engine
from .gaps import FlushWatch, GapBook, TopologyWatch
from .protocol import ConflictLog, DrainRequests, FlipLedger, SyncLedger, empty_proof, process_host

STATUS_EVERY_S = 0.5
POLL_EVERY_S = 0.05
RECHECK_EVERY_S = 1.0
RECHECK_PER_ROUND = 5000
RECONCILE_RETRY_S = 5.0
TTL_TOLERANCE_MS = 2000
STUBBORN_TRIES = 3
RECHECK_ERRORS = (OSError, ConnectionError, MigrateError, redis.RedisError)
CONNECTION_RETRY_S = 120.0
STOP_WAITS_FOR_REPAIR_S = 10.0  # a stop lets a running reconcile finish this long, then leaves it (exit 3)
CONNECTION_ERRORS = (ConnectionError, TimeoutError, OSError, redis.ConnectionError, redis.TimeoutError, Unreachable)
FINISH_HINT = ("rerun the same `redis-migrate sync` command on this run dir: it reconciles every primary "
               "(a verify with repair), then follows again; stop it once `status` shows no unreconciled gap")


@dataclass(frozen=True)
class SyncOptions:
    enable_notifications: bool = False
    max_pending: int = DEFAULT_MAX_PENDING
    mode: str = "auto"


class Stopped(RuntimeFailure):
    """SIGTERM/SIGINT during the bulk copy: the copy resumes on the next run."""


class Reconcile:
    """One verify of the whole source, in its own thread beside the follower.

    A gap's reconcile repairs (and deletes extras before the flip) as `verify --repair` does: the keys the
    follower wrote meanwhile are re-read after it (`touched`), since the repair may have written an older
    value over them. The proof pass after a fresh copy (no gap open) only reads: the keys it finds different
    go to the follower, which re-reads them like any changed key, so nothing else writes the target and a
    stop need not wait for it."""

    def __init__(self, sync: Sync, covered: int, kind: str) -> None:
        self.covered = covered
        self.kind = kind
        self.repair = kind != "proof" or covered > 0
        self.result = None
        self.keys: list[bytes] = []
        self.error: BaseException | None = None
        self.started_at = time.time()
        self.thread = threading.Thread(target=self._run, args=(sync,), name="sync-reconcile", daemon=True)
        self.thread.start()

    def _run(self, sync: Sync) -> None:
        from ..verify.stage import VerifyOptions, run_verify
        report = sync.run_dir.path / "sync" / "proof-report.jsonl"
        try:
            with translated_errors(sync.target.endpoint):
                # --slots: only the range, on both sides; another sync's keys on the target are never "extra"
                scope = {"db": sync.db, "slots": sync.slots, "workers": sync.workers}
                if self.repair:
                    options = VerifyOptions(**scope, repair=True, delete_extra=not sync.flipped)
                else:
                    options = VerifyOptions(**scope, report=report)
                self.result = run_verify(sync.source, sync.target, sync.run_dir, options)
            if not self.repair:
                self.keys = _reported_keys(report)
        except BaseException as exc:  # noqa: BLE001 - the loop counts it and tries again
            self.error = exc

    def done(self) -> bool:
        return not self.thread.is_alive()

    def stable_differences(self) -> int:
        """Differences left after a repair that were not just keys moving (those the follower re-reads)."""
        if self.result is None or not self.repair:
            return 0
        return self.result.differences - self.result.kinds.get("changing", 0)


def _reported_keys(path) -> list[bytes]:
    """The keys a verify report lists as different (not those skipped on purpose by the copy)."""
    import base64
    import json
    keys = []
    with open(path) as lines:
        for line in lines:
            entry = json.loads(line)
            if entry.get("kind") != "skipped":
                keys.append(base64.b64decode(entry["key"]))
    return keys


class Sync:
    """One `sync` run on a run dir; `run()` returns the final status, or raises (exit 2 or 3)."""

    def __init__(self, run_dir: RunDir, source: Topology, target: Topology, dump_options: DumpOptions,
                 replay_options: ReplayOptions, options: SyncOptions, copy: Callable[[], None],
                 warn: Warn = no_warning, live: Callable[[dict], None] | None = None) -> None:
        self.run_dir = run_dir
        self.source = source
        self.target = target
        self.db = dump_options.db
        self.slots = dump_options.slots      # --slots: the range this sync copies, follows and reconciles
        self.workers = dump_options.workers
        self.options = options
        self.copy = copy
        self.warn = warn
        self.live = live
        self.gaps = GapBook()
        self.engine = Engine(source, target, self.db, replay_options, self.gaps, options.max_pending, options.mode,
                             self.slots)
        self.subscribers: list[capture.Subscriber] = []
        self.stop_requested = threading.Event()
        self.state = "copying"
        self.phase = "following"
        self.flipped = False
        self.reconciles = 0
        self.reconcile: Reconcile | None = None
        self.reconcile_due = 0.0
        self.proof = empty_proof()
        self.ledger = SyncLedger(run_dir)
        self.started_at = time.time()
        self.drains = DrainRequests(run_dir)
        self.conflicts = ConflictLog(run_dir)
        self.baseline = Baseline(run_dir)
        self.engine.after_batch.append(self.baseline.record)  # what sync last wrote per key, for cutover
        self._status_stop = threading.Event()
        self._status_lock = threading.Lock()
        self._status_thread: threading.Thread | None = None
        self._readers: tuple[SideReader, SideReader] | None = None
        self.stubborn: dict[bytes, int] = {}  # keys found different at re-checks in a row

    # --- the whole run -------------------------------------------------------------------------------------

    def run(self) -> dict:
        left = capture.restore_notifications(self.run_dir, self.source)
        if left:
            self.warn(f"could not restore notify-keyspace-events recorded by an earlier sync on {', '.join(left)}")
        previous = SyncLedger.load(self.run_dir)
        blind = previous.found or DumpLedger.load(self.run_dir).found  # events while no sync listened are unknown
        self._write_status()
        old_handlers = self._install_signals()
        try:
            self._start_capture()
            self._start_status_thread()
            if not (DumpLedger.load(self.run_dir).finished and ReplayLedger.load(self.run_dir).finished):
                self.copy()
            self.state = "reconciling"  # what changed during the copy, then the proof pass
            if blind:  # before any stop: a sync stopped now has not reconciled it (exit 3)
                self.gaps.add("sync was not running before: events meanwhile are unknown")
            self.engine.apply_pending()  # what changed during the copy
            if not self.stop_requested.is_set():
                self.engine.discover_streams()
                self._start_reconcile("proof")
                self._follow()
            return self._stop()
        finally:
            self._restore_signals(old_handlers)
            self._shutdown()

    def _start_capture(self) -> None:
        """Subscribe on every primary, then make sure its events arrive (probe), enabling them if allowed."""
        self.engine.on_delete = lambda index: self.flush_watch.heard_delete(index)
        self.flush_watch = FlushWatch(0, self.engine.source_wire, self.engine.close_readers)
        self.topology_watch = TopologyWatch(self.source)
        self._subscribe()
        for index in self._followed():
            self._check_notifications(index, self.source.masters[index])
        self.flush_watch = self._new_flush_watch()

    def _followed(self) -> list[int]:
        """The primaries this sync listens to: with --slots, those owning a slot of the range (a standalone
        source owns them all: its events are filtered by key slot in the engine)."""
        masters = self.source.masters
        if self.slots is None or not self.source.is_cluster:
            return list(range(len(masters)))
        return [index for index, node in enumerate(masters) if self.slots.intersects(node.slots)]

    def _new_flush_watch(self) -> FlushWatch:
        return FlushWatch(len(self.source.masters), self.engine.source_wire, self.engine.close_readers,
                          self._followed())

    def _subscribe(self) -> None:
        for index in self._followed():
            subscriber = capture.Subscriber(self.source, index, self.db, self.engine.heard, self._gap)
            with translated_errors(self.source.endpoint):
                subscriber.start()
            self.subscribers.append(subscriber)

    def _check_notifications(self, index: int, node) -> None:
        client = self.source.client(node)
        flags = capture.config_flags(client)
        working = (flags is None or capture.covers(flags)) and capture.probe(self.source, index, self.db,
                                                                            self.engine.probe_seen)
        if working:
            return
        if not self.options.enable_notifications:
            shown = f" (it is {flags!r})" if flags is not None else ""
            raise BadInput(f"keyspace notifications are not enabled on source {node.name}{shown}: sync cannot "
                           "see changes", capture.SETTING_HINT)
        # --slots: other ranges' syncs share this source's events, so the first to stop must not turn them off
        shared = self.slots is not None
        if capture.enable_notifications(self.run_dir, self.source, node, restore=not shared) and shared:
            self.warn(f"--slots: notify-keyspace-events on {node.name} stays on after this sync (other ranges' "
                      "syncs need it); set it back by hand once every sync has stopped")
        if not capture.probe(self.source, index, self.db, self.engine.probe_seen):
            raise BadInput(f"keyspace events from source {node.name} do not arrive even after CONFIG SET",
                           capture.SETTING_HINT)

    def _gap(self, index: int, why: str) -> None:
        self.gaps.add(why)

    # --- following ------------------------------------------------------------------------------------------

    def _follow(self) -> None:
        self._next_poll = self._next_recheck = 0.0
        lost: Backoff | None = None
        while not self.stop_requested.is_set():
            try:
                if lost is not None:
                    self._reconnect()
                applied = self._follow_round()
                lost = None
            except CONNECTION_ERRORS as exc:
                lost = self._connection_lost(exc, lost)
                continue
            if not applied:
                time.sleep(0.01)

    def _follow_round(self) -> int:
        self._raise_subscriber_errors()
        applied = self.engine.apply_pending(limit=5000)
        now = time.monotonic()
        self._watch_gaps()
        if now >= self._next_recheck:  # before the watchlist is queued: a queued key is not re-checked
            self._next_recheck = now + RECHECK_EVERY_S
            self.recheck(RECHECK_PER_ROUND)
        self.engine.watch_tick()
        self._manage_reconcile()
        if now >= self._next_poll:
            self._next_poll = now + POLL_EVERY_S
            self._poll_cutover()
        return applied

    def _connection_lost(self, exc: BaseException, lost: Backoff | None) -> Backoff:
        """A reader's or writer's connection dropped (a cut link, a node restarting). The keys it carried stay
        pending and are re-read (state-based, so a half-applied batch is harmless); a lost subscriber reports its
        own gap. Reconnect with backoff; give up (exit 3) only after CONNECTION_RETRY_S without a good round."""
        lost = lost or Backoff(CONNECTION_RETRY_S)
        if lost.expired():
            raise RuntimeFailure(f"sync could not reconnect for {CONNECTION_RETRY_S:.0f}s ({exc})", FINISH_HINT)
        self.engine.close_readers()
        self._close_readers()
        lost.wait()
        return lost

    def _reconnect(self) -> None:
        """Source connections are reopened on first use (the engine's readers, which the flush watch uses)."""

    def _raise_subscriber_errors(self) -> None:
        for subscriber in self.subscribers:
            if subscriber.error is not None:
                error = subscriber.error
                raise error if isinstance(error, MigrateError) else RuntimeFailure(
                    f"the subscriber on {subscriber.node.name} failed: {error}", FINISH_HINT)

    def _watch_gaps(self) -> None:
        for index in self.flush_watch.check():
            self.gaps.add(f"keys vanished on {self.source.masters[index].name} without events (FLUSHDB/FLUSHALL?)")
        changed = self.topology_watch.check()
        if changed is not None:
            self.gaps.add("the source's primaries or slot map changed (failover or resharding)")
            self._resubscribe_all(changed)

    def _resubscribe_all(self, topology: Topology) -> None:
        """A new topology: subscribe on the new primaries first; the reconcile that follows covers the rest."""
        for subscriber in self.subscribers:
            subscriber.stop()
        self.subscribers = []
        self.source = topology
        self.engine.retarget_source(topology)
        self._subscribe()
        self.flush_watch = self._new_flush_watch()

    def _manage_reconcile(self) -> None:
        running = self.reconcile
        if running is not None and running.done():
            self._finish_reconcile(running)
            running = None
        if running is None and self.gaps.claim() and time.monotonic() >= self.reconcile_due:
            self._start_reconcile("gap")

    def _start_reconcile(self, kind: str) -> None:
        self.state = "reconciling"
        self.engine.touched = set()
        self.reconcile = Reconcile(self, self.gaps.claim(), kind)

    def _finish_reconcile(self, reconcile: Reconcile) -> None:
        touched, self.engine.touched = self.engine.touched or set(), None
        self.engine.forget_written()
        self.engine.pending.add_many(touched, time.time())  # the repair may have written older values
        self.reconcile = None
        self.state = "following"
        if reconcile.error is not None:
            self.warn(f"reconcile failed ({getattr(reconcile.error, 'message', reconcile.error)}); trying again")
            self.reconcile_due = time.monotonic() + RECONCILE_RETRY_S
            if not self.gaps.claim():
                self.gaps.add("reconcile failed")
            return
        self.gaps.close(reconcile.covered)
        self.reconciles += reconcile.kind == "gap" or reconcile.covered > 0
        if len(reconcile.keys) > self.engine.pending.bound // 2:  # too many to re-read one by one: repair
            self.gaps.add(f"the proof pass found {len(reconcile.keys)} keys different")
        self.engine.pending.add_many(reconcile.keys, time.time())
        self.engine.changed = set(touched) | set(reconcile.keys)
        self.engine.changed_count = 0
        self.stubborn = {}
        self.proof = {"verified_at": time.time(), "holds": reconcile.stable_differences() == 0,
                      "changed_since": 0, "rechecked_equal": 0, "open": len(self.engine.changed)}

    # --- the proof's re-checks ---------------------------------------------------------------------------

    def _side_readers(self) -> tuple[SideReader, SideReader]:
        if self._readers is None or self._readers[0].topology is not self.source:
            self._close_readers()
            self._readers = (SideReader(self.source, self.db), SideReader(self.target))
        return self._readers

    def _close_readers(self) -> None:
        if self._readers is not None:
            for reader in self._readers:
                reader.close()
            self._readers = None

    def recheck(self, limit: int | None = None) -> tuple[int, list[bytes]]:
        """Re-read keys applied since the proof on both sides: equal ones leave the open set; a key still
        different goes back to pending. Returns (keys re-checked, keys found different)."""
        changed = self.engine.changed
        if changed is None or not changed:
            self._update_proof()
            return 0, []
        waiting = self.engine.pending.keys  # membership only (atomic under the GIL): no copy of a big set
        keys = list(itertools.islice((key for key in list(changed) if key not in waiting), limit))
        if not keys:
            return 0, []
        try:
            source_reader, target_reader = self._side_readers()
            with translated_errors(self.source.endpoint):
                ref = source_reader.read(keys)
            with translated_errors(self.target.endpoint):
                tgt = target_reader.read(keys)
        except RECHECK_ERRORS:
            self._close_readers()  # a cut or a restart: the next round reads again
            return 0, keys
        now = now_ms()
        different, again = [], []
        for key in keys:
            kind = classify(ref[key], tgt[key], now, TTL_TOLERANCE_MS)
            if kind is None or kind == EXPIRED:
                changed.discard(key)
                self.stubborn.pop(key, None)
                self.proof["rechecked_equal"] += 1
            else:
                different.append(key)
                self.stubborn[key] = self.stubborn.get(key, 0) + 1
                if self.stubborn[key] <= STUBBORN_TRIES:  # past that (a key the target cannot take, or one
                    again.append(key)                      # that never rests), its own events re-apply it
        self.engine.pending.add_many(again, time.time())
        self._update_proof()
        return len(keys), different

    def _update_proof(self) -> None:
        self.proof["changed_since"] = self.engine.changed_count
        self.proof["open"] = len(self.engine.changed or ())
        self.proof["different"] = sum(count > STUBBORN_TRIES for count in list(self.stubborn.values()))

    # --- cutover: drain requests and the flip ---------------------------------------------------------------

    def _poll_cutover(self) -> None:
        request = self.drains.pending()
        if request is not None:
            self._drain(request)
        if not self.flipped and FlipLedger.load(self.run_dir).flipped:
            self._flip()

    def _drain(self, request: dict) -> None:
        """Apply every write made before the fence, then re-check every key changed since the proof."""
        self.phase = "fenced"
        applied_before = self.engine.counts.applied
        self._catch_up()
        rechecked, different = 0, []
        for _ in range(3):
            count, different = self.recheck()
            rechecked += count
            if not different:
                break
            self.engine.pending.add_many(different, time.time())
            self.engine.apply_pending()
        different += [b"<unreconciled gap>"] * bool(self.gaps.claim())
        self.drains.answer(request["id"], self.engine.counts.applied - applied_before, rechecked, len(different),
                           different)

    def _flip(self) -> None:
        """After the SSM flip, changes are forwarded (forward.py, the cutover's) and reconcile never deletes."""
        self.flipped = True
        self.phase = "flipped"
        try:
            from . import forward
        except ImportError:
            forward = None
        if forward is not None and hasattr(forward, "attach"):
            forward.attach(self.engine, self.run_dir)
        self.phase = "forwarding"

    def _catch_up(self, stopping: bool = False) -> None:
        """Everything published before now is applied: PING/PONG on each subscriber, watched streams
        re-read, the pending set emptied, a running reconcile finished."""
        for subscriber in self.subscribers:
            subscriber.flush()
        self.engine.watch_tick(force=True)
        self.engine.apply_pending()
        give_up_at = time.monotonic() + STOP_WAITS_FOR_REPAIR_S
        while self.reconcile is not None:
            if stopping and not self.reconcile.repair:
                self.reconcile = None  # the proof pass only reads: left unfinished (the next sync proves again)
                self.state = "following"
                break
            if stopping and time.monotonic() > give_up_at:
                # A whole-source verify can take minutes, longer than a stop may (ECS kills after 30 s): its
                # gap stays open, so sync exits 3 and the next run reconciles from the start.
                self.warn("stopping before the reconcile finished: its gap stays open")
                self.reconcile = None
                break
            self.engine.apply_pending()
            self._manage_reconcile()
            if self.reconcile is not None:
                time.sleep(0.01)
        self.engine.apply_pending()

    # --- stop ---------------------------------------------------------------------------------------------

    def _stop(self) -> dict:
        if self.state != "copying":
            self._catch_up(stopping=True)
            for _ in range(3):  # a key found different is applied again, then re-checked
                _, different = self.recheck()
                if not different:
                    break
                self.engine.pending.add_many(different, time.time())
                self.engine.apply_pending()
        self.state = "stopped"
        self.phase = "stopped"
        status = self._write_status()
        if self.gaps.claim():
            raise RuntimeFailure(f"sync stopped with {self.gaps.claim()} unreconciled gap(s) "
                                 f"({'; '.join(self.gaps.reasons[-3:])}): the target may miss changes", FINISH_HINT)
        return status

    def _install_signals(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, _frame) -> None:
            self.stop_requested.set()
            if self.state == "copying":
                raise Stopped("sync was stopped during the bulk copy", "rerun the same command: the copy resumes")

        return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    @staticmethod
    def _restore_signals(handlers: dict) -> None:
        for sig, old in handlers.items():
            signal.signal(sig, old)

    def _shutdown(self) -> None:
        for subscriber in self.subscribers:
            subscriber.stopping.set()
        for subscriber in self.subscribers:
            subscriber.stop()
        self._status_stop.set()
        if self._status_thread is not None:
            self._status_thread.join(timeout=2)
        if self.state != "stopped":
            self.state = "stopped"
            self._write_status()
        self._close_readers()
        self.engine.close()
        if hasattr(self.baseline, "close"):
            self.baseline.close()
        left = capture.restore_notifications(self.run_dir, self.source)
        if left:
            self.warn(f"could not restore notify-keyspace-events on {', '.join(left)}: the next sync on this run "
                      "dir restores it")

    # --- status ---------------------------------------------------------------------------------------------

    def status(self) -> dict:
        counts = self.engine.counts
        self._update_proof()
        return {"pid": _pid(), "host": process_host(), "heartbeat_at": time.time(), "started_at": self.started_at,
                "state": self.state,
                "phase": self.phase, "lag_ms": self.engine.lag_ms(), "pending": len(self.engine.pending),
                "applied": counts.applied, "deleted": counts.deleted, "gaps": self.gaps.gaps,
                "unreconciled_gaps": self.gaps.claim(), "reconciles": self.reconciles,
                "last_event_at": counts.last_event_at, "last_old_write_at": counts.last_event_at,
                "forwarded": counts.forwarded, "conflicts": getattr(self.engine, "conflicts", 0),
                "proof": dict(self.proof), "watched_streams": len(self.engine.watched),
                "gap_reasons": list(self.gaps.reasons[-5:]),
                "open_keys": [readable(key) for key in itertools.islice(list(self.engine.changed or ()), 5)],
                "slots": None if self.slots is None else str(self.slots),
                "targets": {"source": self.source.endpoint.redacted, "target": self.target.endpoint.redacted}}

    def _write_status(self) -> dict:
        with self._status_lock:  # the status thread and the stop both write it
            status = self.status()
            self.ledger.update(**status)
            if self.live is not None:
                self.live(status)
        return status

    def _start_status_thread(self) -> None:
        def beat() -> None:
            while not self._status_stop.wait(STATUS_EVERY_S):
                try:
                    self._write_status()
                except Exception:  # noqa: BLE001 - the next beat tries again; the main loop writes at stop
                    pass

        self._status_thread = threading.Thread(target=beat, name="sync-status", daemon=True)
        self._status_thread.start()


def _pid() -> int:
    import os
    return os.getpid()


def sync_stage(run_dir: RunDir, source: Topology, target: Topology, dump_options: DumpOptions,
               replay_options: ReplayOptions, options: SyncOptions, copy: Callable[[], None],
               progress: ProgressFactory = no_progress, warn: Warn = no_warning,
               live: Callable[[dict], None] | None = None) -> dict:
    """Run sync on a run dir whose lock the caller holds and whose endpoints it bound."""
    return Sync(run_dir, source, target, dump_options, replay_options, options, copy, warn, live).run()
