"""Cutover on a running sync, with apps that pick their Redis from SSM at start (tests/ssm_app.py), against
real servers and moto's SSM: the fenced flip loses no acknowledged write, old tasks' writes are forwarded,
a write an app made on the cache is never overwritten, rollback --bring-back brings the cache's writes back.

Sync here is the real `redis-migrate sync`; with REDIS_MIGRATE_TEST_STANDIN_SYNC=1, tests/standin_sync.py (a
minimal follower of the same run-dir protocol, see its docstring), which these tests used before sync was merged.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import testbed
from aws_helpers import own_client
from conftest import SOURCE_PASSWORD
from migrate.rundir import RunDir
from migrate.sync.protocol import SyncLedger
from reliability import ROOT, child_env, popen, spawn
from snapshot import assert_same, snapshot

ENV = "test"
PREFIX = f"/storefront/{ENV}/redis"
ROLLOUT_S = 4  # stragglers write on the old Redis this long after the flip: 2,000 writes at 500/s, all forwarded
HERE = Path(__file__).resolve().parent


def sync_command(source_url: str, target_url: str, run_dir: Path) -> list[str]:
    if os.environ.get("REDIS_MIGRATE_TEST_STANDIN_SYNC") == "1":
        return [sys.executable, str(HERE / "standin_sync.py"), "--source", source_url, "--target", target_url,
                "--run-dir", str(run_dir)]
    return [sys.executable, "-m", "migrate.cli", "sync", "--source", source_url, "--target", target_url, "--run-dir",
            str(run_dir), "--enable-notifications"]


@pytest.fixture
def ssm(aws, standalone_source):
    client = own_client("ssm")
    client.put_parameter(Name=f"{PREFIX}/endpoint", Value="127.0.0.1", Type="String")
    client.put_parameter(Name=f"{PREFIX}/port", Value=str(standalone_source.port), Type="String")
    return client


def ssm_values(ssm) -> tuple[str, str]:
    return tuple(ssm.get_parameter(Name=f"{PREFIX}/{key}")["Parameter"]["Value"] for key in ("endpoint", "port"))


class Bed:
    """The old Redis, the cache, a run dir, the processes started (stopped at the end)."""

    def __init__(self, source, target, run_dir: Path, tmp: Path) -> None:
        self.source, self.target, self.run_dir, self.tmp = source, target, run_dir, tmp
        self.processes: list[subprocess.Popen] = []
        RunDir(run_dir, create=True)

    def urls(self) -> list[str]:
        return [f"127.0.0.1:{self.source.port}={self.source.url()}",
                f"127.0.0.1:{self.target.first.port}={self.target.url()}"]

    def start_sync(self) -> subprocess.Popen:
        process = subprocess.Popen(sync_command(self.source.url(), self.target.url(), self.run_dir), cwd=ROOT,
                                   env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.processes.append(process)
        self.wait(lambda: self.sync().found and self.sync().state == "following" and self.sync().running(),
                  what="sync following", process=process)
        return process

    def sync(self) -> SyncLedger:
        return SyncLedger.load(RunDir(self.run_dir))

    def start_app(self, name: str, *extra) -> tuple[subprocess.Popen, Path]:
        log = self.tmp / f"{name}.jsonl"
        args = [sys.executable, str(HERE / "ssm_app.py"), "--name", name, "--param-prefix", PREFIX, "--log", str(log)]
        for url in self.urls():
            args += ["--url", url]
        process = subprocess.Popen([*args, *map(str, extra)], cwd=ROOT, env=child_env(), stderr=subprocess.PIPE,
                                   text=True)
        self.processes.append(process)
        self.wait(lambda: log.exists() and len(log.read_text().splitlines()) > 20, what=f"{name} writing",
                  process=process)
        return process, log

    def wait(self, condition, what: str, timeout: float = 30, process: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if process is not None and process.poll() is not None:
                raise AssertionError(f"{what}: the process exited {process.returncode}: "
                                     f"{(process.stdout or process.stderr).read()[-3000:]}")
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def idle(self) -> None:
        """Sync has applied everything it heard."""
        self.wait(lambda: self.sync().pending == 0 and self.sync().lag_ms == 0, what="sync idle")
        time.sleep(0.5)
        self.wait(lambda: self.sync().pending == 0, what="sync idle")

    def stop(self, process: subprocess.Popen, timeout: float = 30) -> int:
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout)

    def cutover(self, *extra, env: dict | None = None):
        return spawn("cutover", "--env", ENV, "--target", self.target.url(), "--run-dir", self.run_dir,
                     "--source", self.source.url(), "--json", *extra, env=env, timeout=120)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)


@pytest.fixture
def bed(ssm, standalone_source, serverless_target, run_dir, tmp_path):
    source = standalone_source.client()
    for index in range(2000):
        source.set(f"seed:{index}", "x" * (index % 50), ex=3600 if index % 3 else None)
    source.hset("cart:1", mapping={"a": "1", "b": "2"})
    source.close()  # an open connection of the test would count as an old-side client
    bed = Bed(standalone_source, serverless_target, run_dir, tmp_path)
    yield bed
    bed.close()


def acknowledged(log: Path) -> tuple[dict[str, str], dict]:
    """Every acknowledged write of an app (the last value per key) and its summary."""
    writes, summary = {}, {}
    for line in log.read_text().splitlines():
        item = json.loads(line)
        if isinstance(item, list):
            writes[item[0]] = item[1]
        else:
            summary.update(item)
    return writes, summary


def missing_on(client, writes: dict[str, str]) -> dict[str, tuple]:
    keys = list(writes)
    found = {}
    for start in range(0, len(keys), 1000):
        chunk = keys[start:start + 1000]
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.get(key)
        found.update(zip(chunk, pipe.execute()))
    return {k: (v, found[k]) for k, v in writes.items() if (found[k] or b"").decode() != v}


def conflicts(run_dir: Path) -> list[str]:
    path = run_dir / "conflicts.jsonl"
    return [json.loads(line)["key"] for line in path.read_text().splitlines()] if path.exists() else []


# --- the fenced flip ------------------------------------------------------------------------------------------

def test_flip_with_stragglers_loses_no_acknowledged_write(bed, ssm):
    sync = bed.start_sync()
    app1, log1 = bed.start_app("app1", "--rate", 500)
    out = bed.cutover()
    assert out.exit_code == 0, str(out)
    result = json.loads(out.stdout)
    assert ssm_values(ssm) == ("127.0.0.1", str(bed.target.first.port))
    live = result["live"]
    assert live["drain"]["differences"] == 0 and live["fence_ms"] is not None
    app2, log2 = bed.start_app("app2", "--rate", 500)   # a new task: reads SSM, lands on the cache
    old = bed.source.client()
    old.set("seed:1", "changed by an old task after the flip")   # a key of the bulk copy: forwarded, no conflict
    old.close()
    time.sleep(ROLLOUT_S)                               # the rollout: app1 still writes to the old Redis
    assert bed.stop(app1) == 0
    bed.idle()
    assert bed.stop(sync) == 0
    assert bed.stop(app2) == 0
    cache = bed.target.first.client()
    writes1, summary1 = acknowledged(log1)
    writes2, summary2 = acknowledged(log2)
    assert summary1["endpoint"].endswith(str(bed.source.port)) and summary2["endpoint"].endswith(
        str(bed.target.first.port))
    assert missing_on(cache, writes1) == {} and missing_on(cache, writes2) == {}
    assert cache.get("seed:1") == b"changed by an old task after the flip"
    assert summary1["longest_stall_ms"] <= 2500
    ledger = bed.sync()
    assert ledger.forwarded > 0 and conflicts(bed.run_dir) == []
    status = json.loads(spawn("status", "--run-dir", bed.run_dir, "--json",
                              env={"REDIS_MIGRATE_SOURCE_PASSWORD": SOURCE_PASSWORD}).stdout)
    print(f"\nfence {live['fence_ms']} ms, drain {live['drain_ms']} ms, app1 longest stall "
          f"{summary1['longest_stall_ms']} ms, app1 writes {summary1['writes']}, app2 writes {summary2['writes']}, "
          f"forwarded {ledger.forwarded}, conflicts 0, lost 0; status {status.get('live')}")
    assert status["live"]["phase"] in ("forwarding", "stopped") and status["live"]["fence_ms"] == live["fence_ms"]
    assert status["live"]["old_side_clients"] == 0 and status["live"]["forwarded"] == ledger.forwarded


def test_overlapping_writes_are_conflicts_and_the_cache_wins(bed, ssm):
    sync = bed.start_sync()
    app1, log1 = bed.start_app("app1", "--rate", 500, "--shared", 50)
    assert bed.cutover().exit_code == 0
    app2, log2 = bed.start_app("app2", "--changes", 50, "--shared", 50)  # writes shared:0..49 once, on the cache
    assert app2.wait(30) == 0
    time.sleep(3)                                                       # app1 overwrites them on the old side
    assert bed.stop(app1) == 0
    bed.idle()
    assert bed.stop(sync) == 0
    cache = bed.target.first.client()
    writes1, _ = acknowledged(log1)
    writes2, _ = acknowledged(log2)
    shared2 = {k: v for k, v in writes2.items() if k.startswith("shared:")}
    assert len(shared2) == 50
    assert missing_on(cache, shared2) == {}           # no write made on the cache is overwritten
    assert missing_on(cache, {k: v for k, v in writes1.items() if not k.startswith("shared:")}) == {}
    named = set(conflicts(bed.run_dir))
    assert named == set(shared2), sorted(set(shared2) ^ named)[:10]
    assert bed.sync().conflicts == len(named)


def test_a_source_that_refuses_client_pause_needs_no_fence(ssm, aws, serverless_target, run_dir, tmp_path, bed_dir):
    """ElastiCache refuses CLIENT PAUSE but allows CLIENT SETNAME (which sync uses), so renaming CLIENT away as a
    whole would refuse too much: the server denies the two subcommands through its ACL instead."""
    port = testbed.free_port()
    server = testbed.RedisServer(port, bed_dir / f"no-pause-{port}",
                                 testbed.server_args(port, password=SOURCE_PASSWORD), password=SOURCE_PASSWORD).start()
    try:
        admin = server.client()
        admin.execute_command("ACL", "SETUSER", "default", "-client|pause", "-client|unpause")
        admin.set("k", "v")
        admin.close()
        ssm.put_parameter(Name=f"{PREFIX}/port", Value=str(port), Overwrite=True)
        before = ssm_values(ssm)
        bed = Bed(server, serverless_target, run_dir, tmp_path)
        try:
            sync = bed.start_sync()
            refused = bed.cutover()
            assert refused.exit_code == 2, str(refused)
            assert "CLIENT PAUSE" in refused.stderr and "--no-fence" in refused.stderr and "hint:" in refused.stderr
            assert ssm_values(ssm) == before
            app1, log1 = bed.start_app("app1", "--rate", 300)
            done = bed.cutover("--no-fence")
            assert done.exit_code == 0, str(done)
            live = json.loads(done.stdout)["live"]
            assert live["no_fence"] and live["race_window_ms"] >= 0
            assert ssm_values(ssm) == ("127.0.0.1", str(serverless_target.first.port))
            time.sleep(1)
            assert bed.stop(app1) == 0
            bed.idle()
            assert bed.stop(sync) == 0
            writes1, _ = acknowledged(log1)
            assert missing_on(serverless_target.first.client(), writes1) == {}
            print(f"\n--no-fence race window {live['race_window_ms']} ms")
        finally:
            bed.close()
    finally:
        server.stop()


def test_kill_9_between_fence_and_flip(bed, ssm):
    sync = bed.start_sync()
    before = ssm_values(ssm)
    os.kill(sync.pid, signal.SIGSTOP)       # the drain is never answered: cutover waits inside the fence
    try:
        cutover = popen("cutover", "--env", ENV, "--target", bed.target.url(), "--run-dir", bed.run_dir, "--source",
                        bed.source.url(), "--fence-ms", 3000, "--max-lag-ms", 60_000)
        bed.processes.append(cutover)
        live = bed.run_dir / "live-cutover.json"
        bed.wait(lambda: live.exists() and json.loads(live.read_text()).get("phase") == "fenced", what="the fence")
        fenced_at = json.loads(live.read_text())["fence_started_at"]
        cutover.kill()
        cutover.wait(10)
    finally:
        os.kill(sync.pid, signal.SIGCONT)
    source = bed.source.client()
    source.set("after:kill", "1")           # blocks until the pause lifts itself
    waited = time.time() - fenced_at
    assert 2.5 <= waited <= 6, waited
    assert ssm_values(ssm) == before
    assert not (bed.run_dir / "flip.json").exists()
    bed.wait(lambda: bed.sync().running() and bed.target.first.client().get("after:kill") == b"1",
             what="sync still following")
    assert bed.stop(sync) == 0


# --- rollback --bring-back --------------------------------------------------------------------------------------

def test_rollback_after_writes_brings_them_back(bed, ssm):
    sync = bed.start_sync()
    app1, _ = bed.start_app("app1", "--rate", 300)
    assert bed.cutover().exit_code == 0
    ecs = own_client("ecs")
    ecs.create_cluster(clusterName="storefront-test")
    ecs.register_task_definition(family="web", containerDefinitions=[{"name": "web", "image": "web:1", "memory": 256}])
    ecs.create_service(cluster="storefront-test", serviceName="web", taskDefinition="web", desiredCount=1)
    deployment = ecs.describe_services(cluster="storefront-test", services=["web"])["services"][0]["deployments"]
    back = ["rollback", "--env", ENV, "--run-dir", bed.run_dir, "--bring-back", "--source", bed.source.url(),
            "--target", bed.target.url(), "--redeploy", "storefront-test/web", "--json"]
    refused = spawn(*back)
    assert refused.exit_code == 2 and "kill -TERM" in refused.stderr, str(refused)
    assert bed.stop(app1) == 0
    bed.idle()
    assert bed.stop(sync) == 0
    app2, log2 = bed.start_app("app2", "--changes", 5000, "--rate", 5000)   # 5,000 changes on the cache
    assert app2.wait(60) == 0
    cache, old = bed.target.first.client(), bed.source.client()
    for index in range(0, 300, 3):
        cache.delete(f"seed:{index}")                     # existed at the flip: deleted on the old Redis too
    cache.hset("cart:1", "c", "3")
    old.set("old:only", "created on the old side after sync stopped")   # a conflict: kept, reported
    dry = spawn(*back[:-1], "--dry-run")
    assert dry.exit_code == 0 and "would go ahead" in dry.stdout and "round 1: 5" in dry.stdout, str(dry)
    assert ssm_values(ssm) == ("127.0.0.1", str(bed.target.first.port)) and old.exists("app2:1") == 0
    started = time.monotonic()
    out = spawn(*back)
    took = time.monotonic() - started
    assert out.exit_code == 0, str(out)
    result = json.loads(out.stdout)["bring_back"]
    assert ssm_values(ssm) == ("127.0.0.1", str(bed.source.port))
    assert result["conflicts"] == 1 and result["conflict_keys"] == ["old:only"] and result["final_differences"] == 0
    redeployed = ecs.describe_services(cluster="storefront-test", services=["web"])["services"][0]["deployments"]
    assert redeployed != deployment
    assert result["rollout"]["replaced"] is True   # moto shows no earlier deployment still running
    assert old.get("old:only") is not None
    old_side = {k: v for k, v in snapshot(bed.source).items() if k != b"old:only"}
    assert_same(snapshot(bed.target), old_side, ttl_tolerance_ms=0)
    writes2, _ = acknowledged(log2)
    assert missing_on(old, writes2) == {}
    started = time.monotonic()
    verify = spawn("verify", "--source", bed.source.url(), "--target", bed.target.url(), "--json")
    verify_took = time.monotonic() - started
    print(f"\nbring-back {took:.1f}s wall ({result['seconds']}s inside, rounds {result['rounds']}, stragglers "
          f"{result['stragglers']}), brought back {result['brought_back']}; a full verify {verify_took:.1f}s "
          f"(exit {verify.exit_code})")


def test_dry_run_lists_every_step_and_pauses_nothing(bed, ssm):
    sync = bed.start_sync()
    before = ssm_values(ssm)
    out = spawn("cutover", "--env", ENV, "--target", bed.target.url(), "--run-dir", bed.run_dir, "--source",
                bed.source.url(), "--fence-ms", 5000, "--dry-run")
    assert out.exit_code == 0, str(out)
    steps = [line.strip() for line in out.stdout.splitlines() if line.strip().startswith("would")]
    order = ["baseline", "CLIENT PAUSE 5000 WRITE", "drain", "put /storefront", "flip.json", "CLIENT UNPAUSE"]
    positions = [next(i for i, step in enumerate(steps) if word in step) for word in order]
    assert positions == sorted(positions), steps
    assert "sync following" in out.stdout and "would go ahead" in out.stdout
    started = time.monotonic()
    bed.source.client().set("written:during:dry:run", "1")   # nothing was paused
    assert time.monotonic() - started < 1
    assert ssm_values(ssm) == before and not (bed.run_dir / "flip.json").exists()
    assert bed.stop(sync) == 0


def test_a_drain_that_fails_lifts_the_fence_at_once_and_flips_nothing(bed, ssm):
    sync = bed.start_sync()
    before = ssm_values(ssm)
    os.kill(sync.pid, signal.SIGSTOP)       # the drain is never answered
    try:
        out = bed.cutover("--fence-ms", 20_000, "--max-lag-ms", 60_000)  # the drain is given 0.6 of the fence
    finally:
        os.kill(sync.pid, signal.SIGCONT)
    assert out.exit_code == 1 and "did not answer the drain" in out.stderr and "hint:" in out.stderr, str(out)
    fenced_at = json.loads((bed.run_dir / "live-cutover.json").read_text())["fence_started_at"]
    bed.source.client().set("after:abort", "1")  # blocks until the pause lifts
    assert time.time() < fenced_at + 20, "the fence was not lifted by the failed cutover: it expired by itself"
    assert ssm_values(ssm) == before and not (bed.run_dir / "flip.json").exists()
    record = json.loads((bed.run_dir / "cutover.json").read_text())
    assert record["state"] == "cutover-failed"
    assert bed.stop(sync) == 0


def test_stragglers_never_overwrite_what_new_tasks_wrote_on_the_old_redis(standalone_source, serverless_target,
                                                                        run_dir):
    """After the flip back, new tasks write to the old Redis while late ones still write to the cache: the
    straggler round copies the late writes by compare-and-set against what bring-back left on the old Redis
    (its last round's state, no snapshot): a key a new task wrote there, changed or deleted, is kept."""
    from migrate.cloud.bring_back import CopyBack
    from migrate.net.endpoints import Endpoint, discover
    from migrate.sync.baseline import Baseline
    rd = RunDir(run_dir, create=True)
    old, cache = standalone_source.client(), serverless_target.first.client()
    names = ("new-task", "late-task", "both", "untouched", "gone-on-cache", "gone-here-new-there")
    for side in (old, cache):
        for name in names:
            side.set(f"k:{name}", "at the flip back")
    Baseline(rd).record([(b"k:gone-on-cache", b"x" * 28), (b"k:gone-here-new-there", b"x" * 28)])  # sync put them
    old_topology = discover(Endpoint.from_url("source", standalone_source.url()))
    cache_topology = discover(Endpoint.from_url("target", serverless_target.url()))
    expiring_at = int(time.time() * 1000) + 3000
    for side in (old, cache):
        side.set("k:expiring", "at the flip back", pxat=expiring_at)
    copier = CopyBack(old_topology, cache_topology, rd)
    try:
        assert copier.round()["found"] == 0                       # the last round before the flip back
        while old.exists("k:expiring") or cache.exists("k:expiring"):
            time.sleep(0.1)
        cache.set("k:expiring", "rewritten by a late task")       # gone by expiry on the old Redis: no one's write
        old.set("k:new-task", "new task on the old Redis")        # the flip back: new tasks on the old Redis ...
        cache.set("k:late-task", "late task on the cache")        # ... late ones still on the cache
        cache.set("k:both", "late task on the cache")
        old.set("k:both", "new task on the old Redis")
        cache.delete("k:gone-on-cache")
        cache.delete("k:gone-here-new-there")
        old.set("k:gone-here-new-there", "new task on the old Redis")
        cache.set("k:late-only", "created by a late task")
        old.set("k:new-only", "created by a new task")
        found = copier.stragglers()
        assert old.get("k:new-task") == b"new task on the old Redis"
        assert old.get("k:late-task") == b"late task on the cache"
        assert old.get("k:both") == b"new task on the old Redis"
        assert old.get("k:gone-here-new-there") == b"new task on the old Redis"
        assert old.get("k:untouched") == b"at the flip back" and old.exists("k:gone-on-cache") == 0
        assert old.get("k:late-only") == b"created by a late task" and old.get("k:new-only") == b"created by a new task"
        assert old.get("k:expiring") == b"rewritten by a late task"
        assert (found["copied"], found["deleted"], found["kept_newer_on_old"]) == (3, 1, 2), found
        assert copier.final(found["found"]) == [] and copier.conflicts == set()
        cache.set("k:late-task", "a late write after the straggler scan")   # not brought back: the last compare says so
        old.set("k:new-task", "another new task write")                      # the old Redis's own: not a difference
        assert [d.key for d in copier.final(found["found"])] == [b"k:late-task"]
    finally:
        copier.close()
    assert not (run_dir / "sync" / "bring-back").exists()      # the spilled folds (key names) are removed


def test_stragglers_in_batches_keep_every_key_a_new_task_keeps_writing(standalone_source, serverless_target,
                                                                       run_dir):
    """The straggler round writes in batches of keys (one WATCH ... EXEC each). New tasks keep writing some of
    those keys on the old Redis all along, so batches abort and go key by key: every key they wrote is kept with
    their last value, every other late write is brought back."""
    import threading

    from migrate.cloud.bring_back import CopyBack
    from migrate.net.endpoints import Endpoint, discover
    old, cache = standalone_source.client(), serverless_target.first.client()
    keys = [f"k:{index}" for index in range(1000)]
    hammered = keys[::20]

    def write_all(side, value) -> None:
        with side.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(key, value(key))
            pipe.execute()

    for side in (old, cache):
        write_all(side, lambda key: "at the flip back")
    copier = CopyBack(discover(Endpoint.from_url("source", standalone_source.url())),
                      discover(Endpoint.from_url("target", serverless_target.url())), RunDir(run_dir, create=True))
    last: dict[str, str] = {}
    stop = threading.Event()

    def new_tasks() -> None:
        writes = 0
        while not stop.is_set():
            for key in hammered:
                writes += 1
                last[key] = f"new task write {writes}"
                old.set(key, last[key])

    try:
        assert copier.round()["found"] == 0
        write_all(cache, lambda key: f"late {key}")
        for key in hammered:
            last[key] = "new task's first write"
            old.set(key, last[key])
        writer = threading.Thread(target=new_tasks)
        writer.start()
        try:
            found = copier.stragglers()
        finally:
            stop.set()
            writer.join()
        assert (found["copied"], found["kept_newer_on_old"]) == (len(keys) - len(hammered), len(hammered)), found
        held = dict(zip(keys, old.mget(keys)))
        assert {key: held[key].decode() for key in hammered} == {key: last[key] for key in hammered}
        assert all(held[key] == f"late {key}".encode() for key in keys if key not in hammered)
        assert copier.final(found["found"]) == []
    finally:
        copier.close()


def test_stragglers_into_a_cluster_write_slot_by_slot(cluster_source, serverless_target, run_dir):
    """An ElastiCache cluster as the old Redis: WATCH and a transaction take one slot, so the straggler round
    batches by slot; the late writes land on every master, a key a new task wrote is kept."""
    from migrate.cloud.bring_back import CopyBack
    from migrate.net.endpoints import Endpoint, discover
    old, cache = cluster_source.cluster_client(), serverless_target.first.client()
    keys = [f"k:{index}" for index in range(300)] + [f"{{tag}}:{index}" for index in range(50)]  # 50 in one slot
    for side in (old, cache):
        for key in keys:
            side.set(key, "at the flip back")
    copier = CopyBack(discover(Endpoint.from_url("source", cluster_source.url())),
                      discover(Endpoint.from_url("target", serverless_target.url())), RunDir(run_dir, create=True))
    try:
        assert copier.round()["found"] == 0
        for key in keys:
            cache.set(key, f"late {key}")
        old.set("k:7", "new task")
        old.set("{tag}:7", "new task")
        found = copier.stragglers()
        assert (found["copied"], found["kept_newer_on_old"]) == (len(keys) - 2, 2), found
        assert old.get("k:7") == old.get("{tag}:7") == b"new task"
        assert all(old.get(key) == f"late {key}".encode() for key in keys if key not in ("k:7", "{tag}:7"))
        assert copier.final(found["found"]) == []
    finally:
        copier.close()


def test_later_rounds_scan_the_cache_alone_and_still_find_every_change(standalone_source, serverless_target,
                                                                      run_dir):
    """Rounds after the first scan only the cache and join it with the old side as bring-back knows it: a change,
    a creation and a delete made on the cache between two rounds are all brought back, a key bring-back itself
    wrote on the old Redis is deleted there when the cache drops it, and an old-side-only key stays a conflict."""
    from migrate.cloud.bring_back import CopyBack
    from migrate.net.endpoints import Endpoint, discover
    from migrate.sync.baseline import Baseline
    rd = RunDir(run_dir, create=True)
    old, cache = standalone_source.client(), serverless_target.first.client()
    expire_at = int(time.time() * 1000) + 3_600_000
    for index in range(300):
        for side in (old, cache):
            side.set(f"k:{index}", f"v{index}", pxat=expire_at if index % 2 else None)
    Baseline(rd).record([(f"k:{index}".encode(), b"x" * 28) for index in range(300)])   # sync put them
    cache.set("app:new", "created on the cache after the flip")
    old.set("old:only", "created on the old side")
    copier = CopyBack(discover(Endpoint.from_url("source", standalone_source.url())),
                      discover(Endpoint.from_url("target", serverless_target.url())), rd)
    try:
        first = copier.round()
        assert (first["scanned"], first["found"], first["copied"]) == ("both", 1, 1), first
        cache.set("k:5", "changed between the rounds")
        cache.hset("app:hash", mapping={"a": "1"})
        cache.delete("k:7")
        cache.delete("app:new")                                   # bring-back wrote it on the old Redis
        second = copier.round()
        assert (second["scanned"], second["found"], second["copied"], second["deleted"]) == ("cache", 4, 2, 2), second
        third = copier.round()
        assert third["found"] == 0 and third["scanned"] == "cache"
    finally:
        copier.close()
    assert copier.conflicts == {b"old:only"} and old.get("old:only") is not None
    assert old.get("k:5") == b"changed between the rounds" and old.hgetall("app:hash") == {b"a": b"1"}
    assert old.exists("k:7", "app:new") == 0
    old_side = {k: v for k, v in snapshot(standalone_source).items() if k != b"old:only"}
    assert_same(snapshot(serverless_target), old_side, ttl_tolerance_ms=0)
