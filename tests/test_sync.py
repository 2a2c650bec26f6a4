"""`redis-migrate sync` on real servers, with an app (tests/appwriter.py) writing to the source the whole time.

Every scenario ends the same way: the writer stops, sync gets SIGTERM and must exit 0, and then the independent
snapshot (tests/snapshot.py) says target == source exactly (TTLs within a tolerance, consumer groups and their
pending entries included), and every write the app saw acknowledged is on the target. The scenarios: into the
serverless-like TLS target; from the 3-master cluster; the subscriber's connection cut by the fault proxy; the
subscriber killed by the server at a tiny `client-output-buffer-limit pubsub`; kill -9 of sync mid-follow then
a restart on the same run dir; FLUSHDB on the source mid-follow; and notifications off without
--enable-notifications (exit 2 with the parameter-group hint).

Nothing is timed: waits poll `status --json` with generous limits, so a slow machine is slow, never red.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import seed_data
from appwriter import AppWriter, missing_witnesses
from conftest import CLUSTER_PASSWORD, SOURCE_PASSWORD, TARGET_PASSWORD
from faultproxy import FaultProxy
from migrate.children import die_with_parent
from reliability import assert_clean_error, child_env, command, invoke, spawn
from snapshot import assert_same, assert_same_groups, snapshot, stream_groups

WRITER_RATE = 2000
SEED_KEYS = 3000
FOLLOWING_TIMEOUT_S = 90
STOP_TIMEOUT_S = 60
DEFAULT_PUBSUB_LIMIT = "pubsub 33554432 8388608 60"
SYNC_STATUS_FIELDS = {"state", "lag_ms", "pending", "applied", "deleted", "gaps", "reconciles", "last_event_at"}
KILLED_AT_LIMIT = "overcoming of output buffer limits"


# --- sync as an operator runs it: a separate process, watched through `status --json` -------------------------

class Sync:
    """One `redis-migrate sync` process; its output goes to files (a pipe nobody reads could block it)."""

    def __init__(self, run_dir: Path, source_url: str, target_url: str, *extra: str) -> None:
        self.run_dir = run_dir
        self.args = ["--debug", "sync", "--source", source_url, "--target", target_url, "--run-dir", run_dir, *extra]
        self.logs = run_dir.parent / "sync-logs"
        self.logs.mkdir(exist_ok=True)
        self.process: subprocess.Popen | None = None
        self.runs = 0

    def start(self) -> Sync:
        self.runs += 1
        self.out = self.logs / f"{self.runs}.out"
        self.err = self.logs / f"{self.runs}.err"
        self.process = subprocess.Popen(command(*self.args), env=child_env(), cwd=Path(__file__).parent.parent,
                                        stdout=open(self.out, "w"), stderr=open(self.err, "w"),
                                        preexec_fn=die_with_parent)
        return self

    def output(self) -> str:
        return f"--- stdout\n{self.out.read_text()[-3000:]}\n--- stderr\n{self.err.read_text()[-3000:]}"

    def status(self) -> dict:
        """The `sync` object of `status --run-dir DIR --json` (empty until sync has written it)."""
        result = invoke("status", "--run-dir", self.run_dir, "--json")
        if result.exit_code != 0:
            return {}
        return json.loads(result.stdout).get("sync") or {}

    def wait(self, condition, what: str, timeout: float = FOLLOWING_TIMEOUT_S) -> dict:
        """Poll the status until `condition(sync)` holds; fail with sync's output if it exits or never does."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.status()
            if state and condition(state):
                return state
            if self.process.poll() is not None:
                pytest.fail(f"sync exited {self.process.returncode} while waiting for {what}\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"sync never reached {what} in {timeout}s; last status {state}\n{self.output()}")
            time.sleep(0.1)

    def following(self) -> dict:
        """Following, with the proof pass (the verify after the copy) done."""
        return self.wait(lambda s: s.get("state") == "following" and (s.get("proof") or {}).get("verified_at"),
                         "state=following after the proof pass")

    def stop(self) -> int:
        """SIGTERM, as the operator stops it; its exit code."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"sync did not exit within {STOP_TIMEOUT_S}s of SIGTERM\n{self.output()}")

    def kill9(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def cleanup(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


@pytest.fixture
def sync_processes():
    """Every sync and app a test starts, killed at its end whatever happened (a stray app would keep writing
    into the next test's source)."""
    started: list = []
    yield started
    for process in started:
        process.cleanup() if isinstance(process, Sync) else process.kill()


@pytest.fixture
def source(standalone_source):
    """The standalone source as a Fargate Redis ships it: notifications off, the default pub/sub buffer limit;
    put back after the test (the server is shared by the whole session)."""
    def reset() -> None:
        if standalone_source.process.poll() is None:
            client = standalone_source.client()
            client.config_set("notify-keyspace-events", "")
            client.config_set("client-output-buffer-limit", DEFAULT_PUBSUB_LIMIT)
    reset()
    yield standalone_source
    reset()


@pytest.fixture
def notifying_cluster(cluster_source):
    """The cluster source with notifications on every master, as an ElastiCache parameter group sets them."""
    for node in cluster_source.nodes:
        node.client().config_set("notify-keyspace-events", "KA")
    yield cluster_source
    for node in cluster_source.nodes:
        node.client().config_set("notify-keyspace-events", "")


def source_url(port: int) -> str:
    return f"redis://:{SOURCE_PASSWORD}@127.0.0.1:{port}/0"


def seed(client, keys: int = SEED_KEYS, seed: int = 5) -> None:
    seed_data.seed(client, keys, seed=seed, big_keys=False, short_ttl_keys=0)


def assert_exact(source, target, records) -> None:
    """target == source by the independent snapshot, consumer groups too, and no acknowledged write lost."""
    assert_same(snapshot(source), snapshot(target), ttl_tolerance_ms=1000)
    assert_same_groups(stream_groups(source), stream_groups(target))
    assert missing_witnesses(records, target) == []


def print_figures(name: str, records, final: dict) -> None:
    summary = records.summary
    print(f"\n{name}: writer {summary['acked']} acked at {summary['rate']} ops/s; sync applied {final.get('applied')}"
          f" deleted {final.get('deleted')} gaps {final.get('gaps')} reconciles {final.get('reconciles')}")


def start_writer(started: list, tmp_path: Path, url: str, name: str = "writes") -> AppWriter:
    writer = AppWriter(tmp_path / f"{name}.jsonl", url=url, rate=WRITER_RATE)
    started.append(writer)
    return writer.start()


def started_sync(started: list, tmp_path: Path, run_dir: Path, source_url: str, target_url: str, *extra: str,
                 app_url: str | None = None) -> tuple[Sync, AppWriter]:
    """The setup every scenario shares: the app writing (to `app_url`, else the source), then sync started and
    waited for until it follows with its proof pass done."""
    writer = start_writer(started, tmp_path, app_url or source_url)
    sync = Sync(run_dir, source_url, target_url, *extra)
    started.append(sync.start())
    sync.following()
    return sync, writer


def gap_then_reconciled(sync: Sync, gap: str = "a gap counted", reconciled: str = "the gap reconciled") -> dict:
    """Wait for sync to count a gap, then to have reconciled it and be following again: its last state."""
    sync.wait(lambda s: s.get("gaps", 0) >= 1, gap)
    return sync.wait(lambda s: s.get("reconciles", 0) >= 1 and s.get("unreconciled_gaps", 0) == 0
                     and s.get("state") == "following", reconciled)


def follow_for(sync: Sync, writer: AppWriter, seconds: float) -> None:
    """Let the app write while sync follows (sync must stay up the whole time)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if sync.process.poll() is not None:
            pytest.fail(f"sync exited {sync.process.returncode} while following\n{sync.output()}")
        assert writer.process.poll() is None, "the app writer died"
        time.sleep(0.1)


def finish(sync: Sync, writer: AppWriter):
    """Stop the app, then SIGTERM sync: exit 0. Returns the app's records and sync's last status."""
    records = writer.stop()
    code = sync.stop()
    assert code == 0, f"sync exited {code} after SIGTERM\n{sync.output()}"
    final = sync.status()
    assert final.get("state") == "stopped", final
    return records, final


# --- the scenarios -------------------------------------------------------------------------------------

def test_into_the_serverless_like_tls_target(source, serverless_target, run_dir, tmp_path, sync_processes):
    """The main path, with a big hash changed while following (the chunked path), and the status contract."""
    client = source.client()
    seed(client)
    client.hset("big:hash", mapping={f"field:{i}": "x" * 20 for i in range(5000)})
    sync, writer = started_sync(sync_processes, tmp_path, run_dir, source.url(), serverless_target.url(),
                                "--enable-notifications", "--max-payload", "65536")
    assert client.config_get("notify-keyspace-events")["notify-keyspace-events"] != ""
    follow_for(sync, writer, 0.5)
    client.hset("big:hash", mapping={f"field:{i}": "changed" for i in range(0, 5000, 7)})
    client.hdel("big:hash", "field:1")
    state = sync.wait(lambda s: s.get("applied", 0) > 0 and s.get("last_event_at"), "applied > 0")
    assert SYNC_STATUS_FIELDS <= set(state), f"status --json sync object lacks {SYNC_STATUS_FIELDS - set(state)}"
    assert state["lag_ms"] >= 0 and state["pending"] >= 0 and state["gaps"] == 0
    follow_for(sync, writer, 1.0)
    records, final = finish(sync, writer)
    print_figures("serverless-like TLS target", records, final)
    assert_exact(source, serverless_target, records)
    assert client.config_get("notify-keyspace-events")["notify-keyspace-events"] == "", \
        "sync did not restore the source's notify-keyspace-events"


def test_from_the_three_master_cluster(notifying_cluster, serverless_target, run_dir, tmp_path, sync_processes):
    seed(notifying_cluster.cluster_client())
    sync, writer = started_sync(sync_processes, tmp_path, run_dir, notifying_cluster.url(), serverless_target.url())
    follow_for(sync, writer, 1.5)
    records, final = finish(sync, writer)
    print_figures("3-master cluster source", records, final)
    assert records.header["cluster"] is True
    assert_exact(notifying_cluster, serverless_target, records)


def test_subscriber_cut_by_the_fault_proxy_is_a_gap_then_a_reconcile(source, serverless_target, run_dir, tmp_path,
                                                                     sync_processes):
    """sync reaches the source only through the proxy; the app writes directly. Cutting every connection
    mid-follow must count a gap, reconcile it, and still end exact."""
    seed(source.client())
    with FaultProxy(source.port, max_seconds=600) as proxy:
        sync, writer = started_sync(sync_processes, tmp_path, run_dir, source_url(proxy.port), serverless_target.url(),
                                    "--enable-notifications", app_url=source.url())
        follow_for(sync, writer, 0.5)
        assert proxy.cut_all() > 0
        sync.wait(lambda s: s.get("gaps", 0) >= 1, "a gap counted")
        follow_for(sync, writer, 0.5)  # the app writes on while the subscriber is cut
        state = gap_then_reconciled(sync)
        assert state["gaps"] >= 1
        follow_for(sync, writer, 0.5)
        records, final = finish(sync, writer)
    print_figures("subscriber cut by the proxy", records, final)
    assert_exact(source, serverless_target, records)


def test_subscriber_killed_at_the_pubsub_output_buffer_limit(source, serverless_target, run_dir, tmp_path,
                                                             sync_processes):
    """A tiny `client-output-buffer-limit pubsub` and a burst of writes: the server itself drops the subscriber."""
    client = source.client()
    seed(client)
    sync, writer = started_sync(sync_processes, tmp_path, run_dir, source.url(), serverless_target.url(),
                                "--enable-notifications")
    log = source.directory / "server.log"
    kills_before = log.read_text().count(KILLED_AT_LIMIT)
    client.config_set("client-output-buffer-limit", "pubsub 8kb 4kb 1")
    for round_ in range(25):  # a burst: one pipeline's events (~60 KB per 1,000 SETs) outrun any subscriber
        pipe = client.pipeline(transaction=False)
        for i in range(2_000):
            pipe.set(f"burst:{round_}:{i}", i)
        pipe.execute()
        if log.read_text().count(KILLED_AT_LIMIT) > kills_before:
            break
    assert log.read_text().count(KILLED_AT_LIMIT) > kills_before, "the server never dropped the subscriber"
    client.config_set("client-output-buffer-limit", DEFAULT_PUBSUB_LIMIT)
    gap_then_reconciled(sync)
    follow_for(sync, writer, 1.0)
    records, final = finish(sync, writer)
    print_figures("pubsub output-buffer limit", records, final)
    assert_exact(source, serverless_target, records)


def test_kill_9_mid_follow_then_restart_reconciles_and_is_exact(source, serverless_target, run_dir, tmp_path,
                                                                 sync_processes):
    seed(source.client())
    sync, writer = started_sync(sync_processes, tmp_path, run_dir, source.url(), serverless_target.url(),
                                "--enable-notifications")
    follow_for(sync, writer, 0.5)
    sync.kill9()
    follow_for_dead = time.monotonic() + 1.0  # the app writes on while nobody listens
    while time.monotonic() < follow_for_dead:
        time.sleep(0.1)
    restarted_at = time.time()
    sync.start()
    sync.wait(lambda s: s.get("pid", sync.process.pid) == sync.process.pid
              and (s.get("heartbeat_at") or restarted_at + 1) > restarted_at
              and s.get("state") == "following" and s.get("reconciles", 0) >= 1,
              "the restarted sync following after a reconcile")
    follow_for(sync, writer, 1.0)
    records, final = finish(sync, writer)
    print_figures("kill -9 then restart", records, final)
    assert_exact(source, serverless_target, records)
    assert source.client().config_get("notify-keyspace-events")["notify-keyspace-events"] == "", \
        "the restarted sync did not restore notify-keyspace-events as it was before the first one"


def test_flushdb_on_the_source_mid_follow(source, serverless_target, run_dir, tmp_path, sync_processes):
    """FLUSHDB publishes no key events: only the DBSIZE drop tells, and the target must follow it."""
    client = source.client()
    seed(client)
    sync, writer = started_sync(sync_processes, tmp_path, run_dir, source.url(), serverless_target.url(),
                                "--enable-notifications")
    follow_for(sync, writer, 0.5)
    client.flushdb()
    flushed_at = time.time()
    gap_then_reconciled(sync, "the flush seen as a gap", "the flush reconciled")
    follow_for(sync, writer, 1.0)
    records, final = finish(sync, writer)
    print_figures("FLUSHDB mid-follow", records, final)
    # the flush took the app's earlier writes with it: only those sent after it returned must be on the target
    records.ops = [op for op in records.ops if op[1] is not None and op[0] - op[1] / 1000 > flushed_at]
    assert_exact(source, serverless_target, records)


def test_notifications_off_without_the_option_exits_2_with_the_parameter_group_hint(source, serverless_target,
                                                                                    run_dir):
    seed(source.client(), keys=100)
    outcome = spawn("sync", "--source", source.url(), "--target", serverless_target.url(), "--run-dir", run_dir,
                    timeout=60)
    assert_clean_error(outcome, 2, "notify-keyspace-events", "parameter group",
                       secrets=(SOURCE_PASSWORD, TARGET_PASSWORD, CLUSTER_PASSWORD))
    assert serverless_target.first.client().dbsize() == 0, "nothing is copied before events can be captured"
    assert source.client().config_get("notify-keyspace-events")["notify-keyspace-events"] == ""


def test_two_threads_saving_the_sync_ledger_never_fail(tmp_path):
    """sync's status thread and its main loop both save sync.json (the stop raced the beat: ENOENT on rename)."""
    import threading

    from migrate.rundir import RunDir
    from migrate.sync.protocol import SyncLedger

    run_dir = RunDir(tmp_path / "run", create=True)
    errors: list[Exception] = []

    def beat() -> None:
        ledger = SyncLedger(run_dir)
        for count in range(200):
            try:
                ledger.update(applied=count)
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

    threads = [threading.Thread(target=beat) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert SyncLedger.load(run_dir).applied == 199
