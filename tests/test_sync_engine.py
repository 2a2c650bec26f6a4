"""The sync engine's mechanisms, each on real servers: capture and its probe, notifications set and restored,
coalescing, deletes and expiries, renames, streams changed without events, gaps (FLUSHDB, a dropped
subscriber, the pending bound, a killed sync) and their reconciles, status while running, and a stop that
leaves the target equal to the source (an independent snapshot, TTLs included).

sync runs as a separate process, as an operator runs it; each test waits on the run dir's sync.json.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tests.reliability import popen, spawn
from tests.snapshot import assert_same, snapshot

from migrate.rundir import RunDir
from migrate.sync.capture import NotificationsLedger
from migrate.sync.protocol import SyncLedger

WAIT_S = 60


def ledger(run_dir: Path) -> SyncLedger:
    return SyncLedger.load(RunDir(run_dir))


def wait_for(predicate, what: str, process: subprocess.Popen | None = None, timeout: float = WAIT_S,
             describe=lambda: ""):
    """Poll until `predicate()` is truthy; fail with the sync's output if it exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"sync exited {process.returncode} while waiting for {what}\n{out[-2000:]}\n{err[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what} {describe()}")


class SyncRun:
    """`redis-migrate sync` as a child process on one run dir."""

    def __init__(self, source_url: str, target_url: str, run_dir: Path, *extra: str) -> None:
        self.run_dir = run_dir
        self.process = popen("sync", "--source", source_url, "--target", target_url, "--run-dir", run_dir, *extra)

    def state(self) -> dict:
        try:
            found = ledger(self.run_dir)
        except Exception:  # noqa: BLE001 - not written yet
            return {}
        return found.to_dict() if found.found and found.pid == self.process.pid else {}

    def following(self) -> dict:
        """Wait until the copy is done and the proof pass has finished."""
        return wait_for(lambda: (s := self.state()).get("state") == "following" and s["proof"]["verified_at"] and s,
                        "sync to follow", self.process)

    def settled(self, since: float | None = None) -> dict:
        """Wait until every change heard is applied and no gap is open (after `since`, if given)."""
        def done():
            s = self.state()
            return (s.get("state") == "following" and s["pending"] == 0 and s["lag_ms"] == 0
                    and s["unreconciled_gaps"] == 0 and (since is None or s["heartbeat_at"] > since) and s)
        return wait_for(done, "sync to settle", self.process)

    def rechecked(self) -> dict:
        """Settled, and every key applied since the proof re-read equal (the re-checks no longer look at any:
        a change without an event is then seen only through the watchlist)."""
        self.settled(since=time.time())
        return wait_for(lambda: (s := self.state()).get("proof", {}).get("open") == 0 and s["pending"] == 0 and s,
                        "the re-checks to finish", self.process, describe=self.state)

    def stop(self, timeout: float = 30) -> tuple[int, str, str]:
        self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, out, err

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


@pytest.fixture
def notifying(standalone_source):
    """The standalone source with keyspace events on (KA), put back to off afterwards."""
    client = standalone_source.client()
    client.config_set("notify-keyspace-events", "KA")
    yield standalone_source
    client.config_set("notify-keyspace-events", "")


@pytest.fixture
def cluster_notifying(cluster_source):
    clients = [node.client() for node in cluster_source.nodes]
    for client in clients:
        client.config_set("notify-keyspace-events", "KA")
    yield cluster_source
    for client in clients:
        client.config_set("notify-keyspace-events", "")


def seed(client, count: int = 300) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.set(f"seed:{i}", f"v{i}")
    pipe.hset("seed:hash", mapping={"a": "1", "b": "2"})
    pipe.rpush("seed:list", "x", "y")
    pipe.set("seed:ttl", "t", ex=600)
    pipe.execute()


def stopped_equal(run: SyncRun, source, target) -> dict:
    code, out, err = run.stop()
    assert code == 0, f"exit {code}\n{out}\n{err}"
    assert_same(snapshot(source), snapshot(target))
    return ledger(run.run_dir).to_dict()


# --- the pure parts: flags, the pending set, the flush rule ----------------------------------------------------

def test_flags_that_cover_every_change_and_the_merge():
    from migrate.sync.capture import covers, merged
    assert covers("KA") and covers("AKE") and covers("Kg$lshzxetd")
    assert not covers("AE") and not covers("K$") and not covers("Kg$lshzetd")  # no x: expiries unheard
    assert merged("") == "KA" and merged("Kg") == "KgA" and merged("AK") == "AK"


def test_pending_coalesces_keeps_order_and_drops_everything_past_its_bound():
    from migrate.sync.follow import Pending
    overflows = []
    pending = Pending(3, lambda: overflows.append(1))
    pending.add(b"a", 1.0)
    pending.add(b"b", 2.0)
    pending.add(b"a", 3.0)            # coalesced: still first seen at 1.0
    assert len(pending) == 2 and pending.oldest() == 1.0
    assert pending.take(1) == [b"a"] and pending.oldest() == 1.0  # in flight until done()
    pending.done()
    pending.add_many([b"c", b"d"], 4.0)
    assert overflows == [] and len(pending) == 3
    pending.add(b"e", 5.0)            # past the bound: the set is dropped (a reconcile finds them)
    assert overflows == [1] and pending.take(10) == [b"e"]


def test_a_dbsize_drop_counts_as_a_flush_only_when_the_next_look_confirms_it():
    from migrate.sync.gaps import FlushWatch
    watch = FlushWatch(1, lambda index: None, lambda: None)
    assert not watch._look(0, 1000)
    for _ in range(400):
        watch.heard_delete(0)
    assert not watch._look(0, 600)    # explained by the deletions heard
    assert not watch._look(0, 100)    # 500 gone unheard: suspect only
    for _ in range(500):
        watch.heard_delete(0)         # their events arrive late
    assert not watch._look(0, 100)    # explained after all
    assert not watch._look(0, 0)      # a flush: suspect ...
    assert watch._look(0, 0)          # ... confirmed


# --- capture: notifications --------------------------------------------------------------------------------

def test_notifications_off_exit_2_naming_the_parameter(standalone_source, serverless_target, run_dir):
    standalone_source.client().config_set("notify-keyspace-events", "")
    seed(standalone_source.client(), 10)
    outcome = spawn("sync", "--source", standalone_source.url(), "--target", serverless_target.url(),
                    "--run-dir", run_dir, timeout=60)
    assert outcome.exit_code == 2, str(outcome)
    assert "notify-keyspace-events" in outcome.stderr and "KA" in outcome.stderr, str(outcome)
    assert "parameter group" in outcome.stderr and "hint:" in outcome.stderr
    assert serverless_target.cluster_client().dbsize() == 0  # refused before the copy


def test_enable_notifications_sets_then_restores_even_after_a_crash(standalone_source, serverless_target, run_dir):
    client = standalone_source.client()
    client.config_set("notify-keyspace-events", "Kg")  # on, but missing classes: not enough
    seed(client, 20)
    run = SyncRun(standalone_source.url(), serverless_target.url(), run_dir, "--enable-notifications")
    run.following()
    flags = client.config_get("notify-keyspace-events")["notify-keyspace-events"]
    assert "K" in flags and "A" in flags
    assert NotificationsLedger.load(RunDir(run_dir)).changed == {f"127.0.0.1:{standalone_source.port}": "gK"}
    run.kill()  # crashed: the old value is still recorded
    assert NotificationsLedger.load(RunDir(run_dir)).found
    # the next sync puts the old value back first; without --enable-notifications it then refuses (exit 2)
    outcome = spawn("sync", "--source", standalone_source.url(), "--target", serverless_target.url(),
                    "--run-dir", run_dir, timeout=60)
    assert outcome.exit_code == 2, str(outcome)
    assert client.config_get("notify-keyspace-events")["notify-keyspace-events"] == "gK"
    assert not NotificationsLedger.load(RunDir(run_dir)).found
    run = SyncRun(standalone_source.url(), serverless_target.url(), run_dir, "--enable-notifications")
    run.settled()
    stopped_equal(run, standalone_source, serverless_target)
    assert client.config_get("notify-keyspace-events")["notify-keyspace-events"] == "gK"
    client.config_set("notify-keyspace-events", "")


# --- follow: every kind of change ---------------------------------------------------------------------------

def test_follow_applies_every_change_and_stops_equal(notifying, serverless_target, run_dir):
    source = notifying.client()
    seed(source)
    source.xadd("s:events", {"f": "0"})
    source.xgroup_create("s:events", "g", id="0")
    source.pfadd("old:visitors", "a", "b", "c")   # a HyperLogLog from before sync: found by its scan
    run = SyncRun(notifying.url(), serverless_target.url(), run_dir)
    run.following()
    target = serverless_target.cluster_client()
    assert source.pfcount("old:visitors") == 3    # rewrites its cached count, no event
    wait_for(lambda: target.get("old:visitors") == source.get("old:visitors"), "a HyperLogLog older than sync",
             run.process, timeout=10)

    pipe = source.pipeline(transaction=False)
    for _ in range(200):                            # coalescing: many events, one key
        pipe.incr("counter")
    for i in range(50):                             # DEL never overtakes a later write of the same key
        pipe.set(f"flip:{i}", "a")
        pipe.delete(f"flip:{i}")
        pipe.set(f"flip:{i}", f"b{i}")
    pipe.set("short", "x", px=300)                   # expires: deleted on the target
    pipe.set("seed:1", "changed", ex=900)
    pipe.persist("seed:ttl")
    pipe.delete("seed:2")
    pipe.rename("seed:3", "renamed:3")              # both names
    pipe.hset("seed:hash", "c", "3")
    pipe.rpush("seed:list", "z")
    pipe.zincrby("z", 2.5, "m")
    pipe.execute()
    time.sleep(0.5)
    run.settled(since=time.time())
    assert target.get("counter") == b"200"
    assert target.get("flip:7") == b"b7"
    assert target.exists("short", "seed:2", "seed:3") == 0
    assert target.get("renamed:3") == b"v3"
    assert target.pttl("seed:ttl") == -1 and 0 < target.ttl("seed:1") <= 900

    # streams: XREADGROUP of an existing consumer and XACK publish no event; the watchlist re-reads them
    source.xadd("s:events", {"f": "1"})
    source.xreadgroup("g", "c1", {"s:events": ">"}, count=1)   # creates the consumer (an event)
    wait_for(lambda: [c["name"] for c in target.xinfo_consumers("s:events", "g")] == [b"c1"], "the consumer",
             run.process, timeout=10)
    run.rechecked()
    source.xreadgroup("g", "c1", {"s:events": ">"}, count=1)   # no event
    entry = source.xpending_range("s:events", "g", "-", "+", 10)[0]["message_id"]
    source.xack("s:events", "g", entry)                         # no event
    expected = {g["name"]: g["last-delivered-id"] for g in source.xinfo_groups("s:events")}
    wait_for(lambda: {g["name"]: g["last-delivered-id"] for g in target.xinfo_groups("s:events")} == expected,
             "the stream's group to follow XREADGROUP", run.process, timeout=10)

    # PFCOUNT writes the HyperLogLog's cached count into the value without an event: watched too
    source.pfadd("visitors", *[f"u{i}" for i in range(50)])
    wait_for(lambda: target.get("visitors") == source.get("visitors"), "the PFADD", run.process, timeout=10)
    run.rechecked()
    assert source.pfcount("visitors") == 50                      # no event
    wait_for(lambda: target.get("visitors") == source.get("visitors"), "the HyperLogLog's cache to follow PFCOUNT",
             run.process, timeout=10)

    status = spawn("status", "--run-dir", run_dir, "--json", timeout=30)
    sync = json.loads(status.stdout)["sync"]
    assert status.exit_code == 0 and sync["running"] and sync["state"] == "following"
    assert 55 <= sync["applied"] < 300 and sync["deleted"] >= 2 and sync["last_event_at"]  # 350 writes coalesced
    assert {"lag_ms", "pending", "gaps", "reconciles", "proof"} <= set(sync)
    text = spawn("status", "--run-dir", run_dir, timeout=30).stdout
    assert "sync following: lag" in text and "applied" in text
    final = stopped_equal(run, notifying, serverless_target)
    assert final["state"] == "stopped" and final["gaps"] == 0 and final["proof"]["holds"]


# --- gaps and reconciles -----------------------------------------------------------------------------------

def wait_reconciled(run: SyncRun, gaps: int) -> dict:
    """Wait until at least `gaps` gaps were seen and every one is reconciled and applied."""
    wait_for(lambda: run.state().get("gaps", 0) >= gaps, f"{gaps} gap(s)", run.process, timeout=20)
    return run.settled(since=time.time())


def test_flushdb_is_a_gap_and_the_reconcile_deletes_on_the_target(notifying, serverless_target, run_dir):
    source = notifying.client()
    seed(source, 500)
    run = SyncRun(notifying.url(), serverless_target.url(), run_dir)
    run.following()
    source.flushdb()                 # no key events at all
    source.set("after", "1")
    state = wait_reconciled(run, 1)
    assert state["reconciles"] >= 1 and any("FLUSHDB" in reason for reason in state["gap_reasons"])
    final = stopped_equal(run, notifying, serverless_target)
    assert final["unreconciled_gaps"] == 0 and serverless_target.cluster_client().dbsize() == 1


def test_a_dropped_subscriber_is_a_gap_resubscribed_then_reconciled(notifying, serverless_target, run_dir):
    source = notifying.client()
    seed(source, 100)
    run = SyncRun(notifying.url(), serverless_target.url(), run_dir)
    run.following()
    source.client_kill_filter(_type="pubsub")
    source.set("seed:5", "after the drop")
    state = wait_reconciled(run, 1)
    assert any("dropped" in reason for reason in state["gap_reasons"])
    source.set("seed:6", "heard again")       # the new subscription works
    run.settled(since=time.time())
    stopped_equal(run, notifying, serverless_target)


def test_pending_over_its_bound_falls_back_to_a_reconcile(notifying, serverless_target, run_dir):
    source = notifying.client()
    seed(source, 50)
    run = SyncRun(notifying.url(), serverless_target.url(), run_dir, "--max-pending", "1000", "--max-ops-per-sec",
                  "2000")
    run.following()
    pipe = source.pipeline(transaction=False)
    for i in range(6000):
        pipe.set(f"burst:{i}", i)
    pipe.execute()
    state = wait_reconciled(run, 1)
    assert any("bound" in reason for reason in state["gap_reasons"]) and state["reconciles"] >= 1
    stopped_equal(run, notifying, serverless_target)


def test_kill_9_then_restart_reconciles_what_changed_meanwhile(notifying, serverless_target, run_dir):
    source = notifying.client()
    seed(source, 200)
    run = SyncRun(notifying.url(), serverless_target.url(), run_dir)
    run.following()
    source.set("seed:1", "heard")
    run.settled(since=time.time())
    run.kill()
    source.delete("seed:2")                # while no sync listens
    source.set("seed:3", "unheard", ex=800)
    source.hset("new:hash", "f", "v")
    assert ledger(run_dir).crashed()
    run = SyncRun(notifying.url(), serverless_target.url(), run_dir)
    state = run.following()
    assert state["gaps"] >= 1 and "not running" in " ".join(state["gap_reasons"])
    run.settled()
    final = stopped_equal(run, notifying, serverless_target)
    assert final["reconciles"] >= 1


def test_cluster_source_followed_on_every_primary(cluster_notifying, serverless_target, run_dir):
    source = cluster_notifying.cluster_client()
    for i in range(300):
        source.set(f"c:{i}", i)
    run = SyncRun(cluster_notifying.url(), serverless_target.url(), run_dir)
    run.following()
    for i in range(0, 300, 3):
        source.delete(f"c:{i}")
        source.set(f"c:{i + 1}", "new", px=60_000)
        source.hset(f"h:{i}", "f", i)
    run.settled(since=time.time())
    code, out, err = run.stop()
    assert code == 0, err
    assert_same(snapshot(cluster_notifying), snapshot(serverless_target))


def test_drain_request_answered_and_flip_switches_to_forwarding(notifying, serverless_target, run_dir):
    from migrate.sync.protocol import DrainRequests, FlipLedger
    source = notifying.client()
    seed(source, 50)
    run = SyncRun(notifying.url(), serverless_target.url(), run_dir, "--max-payload", "1024")
    run.following()
    source.hset("big", mapping={f"f{i}": "x" * 20 for i in range(200)})  # over 1 KiB: written type by type
    source.set("small", "v", ex=900)
    fence = time.time()
    for i in range(100):
        source.set(f"late:{i}", i)
    drains = DrainRequests(RunDir(run_dir))
    answer = drains.wait(drains.request(fence), timeout_s=20)
    assert answer is not None and answer["differences"] == 0, answer
    assert serverless_target.cluster_client().get("late:99") == b"99"   # applied before the answer
    from migrate.sync.baseline import Baseline, digest
    target = serverless_target.first.client()
    baseline = Baseline(RunDir(run_dir))
    for key in (b"big", b"small"):  # what cutover's compare-and-set expects on the target: its own DUMP
        assert baseline.get(key) == (True, digest(target.dump(key), target.pexpiretime(key))), key
    baseline.close()
    names = [c["name"] for c in source.client_list() if c["name"]]
    assert names and all(name == "redis-migrate-sync" for name in names)
    FlipLedger.load(RunDir(run_dir)).record(time.time(), 5, False, "target")
    wait_for(lambda: run.state().get("phase") == "forwarding", "the flip to be seen", run.process, timeout=10)
    stopped_equal(run, notifying, serverless_target)


@pytest.mark.slow  # its own cluster with a replica takes ~8 s to start: opt-in (--runslow), ~20 s
def test_a_failover_is_a_gap_resubscribed_on_the_new_primary(tmp_path, serverless_target, run_dir):
    import testbed
    cluster = testbed.start_cluster(tmp_path / "failover", 3, password="fo-secret", replicas=1)
    try:
        for node in cluster.nodes + cluster.replicas:
            node.client().config_set("notify-keyspace-events", "KA")
        client = cluster.cluster_client()
        for i in range(200):
            client.set(f"f:{i}", i)
        run = SyncRun(cluster.url(), serverless_target.url(), run_dir)
        run.following()
        promoted = cluster.replicas[0]
        promoted.client().execute_command("CLUSTER", "FAILOVER")
        wait_for(lambda: promoted.client().execute_command("ROLE")[0] == b"master", "the failover", run.process)
        state = wait_reconciled(run, 1)
        assert any("failover" in reason for reason in state["gap_reasons"]), state["gap_reasons"]
        client = cluster.cluster_client()                   # the new slot map
        for i in range(200):
            client.set(f"f:{i}", f"after {i}")            # heard from the new primary too
        run.settled(since=time.time())
        masters = type("Masters", (), {"nodes": [promoted, *cluster.nodes[1:]]})()
        code, out, err = run.stop()
        assert code == 0, err
        assert_same(snapshot(masters), snapshot(serverless_target))
        assert serverless_target.cluster_client().get("f:0") == b"after 0"
    finally:
        cluster.stop()


def test_sigterm_during_the_proof_pass_exits_0_with_the_target_exact(notifying, serverless_target, run_dir):
    """The proof pass after a fresh copy only reads (the keys it finds different go to the follower): a stop
    does not wait for it, and what the follower applied is exact."""
    source = notifying.client()
    seed(source, 5000)
    run = SyncRun(notifying.url(), serverless_target.url(), run_dir)
    wait_for(lambda: run.state().get("state") in ("reconciling", "following"), "the copy", run.process)
    source.set("seed:1", "during the proof")
    source.delete("seed:2")
    final = stopped_equal(run, notifying, serverless_target)
    assert final["state"] == "stopped" and final["unreconciled_gaps"] == 0
