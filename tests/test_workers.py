"""Scale-out on real servers: one worker process per source master (--workers), kill -9 of a dump with
workers then resume, and a copy split by --slots into two run dirs that cutover takes together.

Outcomes are read with the independent tests/snapshot.py, and SSM values from moto.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

import seed_data
import testbed
from aws_helpers import aws_calls, invoke, own_client  # noqa: F401
from conftest import TARGET_PASSWORD
from migrate.net.keyspace import SLOT_COUNT, SlotRanges, coverage, key_slot
from migrate.rundir import RunDir, RunLedger
from reliability import assert_clean_error, ledger, popen, spawn
from snapshot import assert_same, snapshot

ENV = "test"
ENDPOINT = f"/storefront/{ENV}/redis/endpoint"
PORT = f"/storefront/{ENV}/redis/port"


def run_json(*args, code: int = 0) -> dict:
    result = invoke(*args, "--json", code=code)
    return json.loads(result.stdout)


def dump_ledger(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "dump.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def in_slots(data: dict, slots: SlotRanges) -> dict:
    return {key: value for key, value in data.items() if key_slot(key) in slots}


def test_slot_ranges_parse_iterate_and_cover():
    halves = [SlotRanges.parse("0-8191"), SlotRanges.parse("8192-16383")]
    assert coverage(halves) == ("", "")
    assert 8191 in halves[0] and 8192 not in halves[0] and len(list(halves[1])) == 8192
    assert coverage([SlotRanges.parse("0-8000"), SlotRanges.parse("8192-16383")]) == ("8001-8191", "")
    assert coverage([SlotRanges.parse("0-8191"), SlotRanges.parse("8100-16383")]) == ("", "8100-8191")
    assert str(SlotRanges.parse("7, 0-3")) == "0-3,7"
    for bad in ("", "5-2", "0-16384", "a-b", "1-2-3", "0-10,5-20"):
        with pytest.raises(ValueError):
            SlotRanges.parse(bad)


def test_cluster_source_with_two_workers_is_exact(cluster_source, cluster_target, run_dir):
    """3 masters, 2 workers: each master dumped by a process of its own, dump.json kept by the parent."""
    seed_data.seed(cluster_source.cluster_client(), 6000, seed=15, short_ttl_keys=0)
    summary = run_json("run", "--source", cluster_source.url(), "--target", cluster_target.url(),
                       "--run-dir", run_dir, "--workers", 2)
    assert summary["dump_done"] and summary["replay_done"] and summary["verify"]["equal"], summary
    assert_same(snapshot(cluster_source), snapshot(cluster_target))
    masters = dump_ledger(run_dir)["masters"]
    assert len(masters) == 3 and all(m["done"] for m in masters.values())
    assert sum(m["counts"]["scanned"] for m in masters.values()) >= 6000
    verify = run_json("verify", "--source", cluster_source.url(), "--target", cluster_target.url(), "--workers", 1)
    assert verify["equal"], verify


def kill_when(args, ready, seen: list) -> None:
    """Start `args`, kill -9 it once `ready()` holds; its worker processes (kept in `seen`) must die with it."""
    import psutil
    process = popen(*args)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            seen[:] = psutil.Process(process.pid).children(recursive=True) or seen
            if ready():
                break
            time.sleep(0.005)
        assert process.poll() is None, f"{args[0]} ended before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert seen, f"never saw the {args[0]}'s workers"
    _, alive = psutil.wait_procs(seen, timeout=10)
    assert not alive, alive


def test_kill_9_mid_dump_and_mid_replay_with_workers_then_resume_is_exact(cluster_source, serverless_target, run_dir):
    """The parent is killed while its workers write, in the dump and then in the replay; the workers die with
    it, only the parent wrote the ledgers, and each resume is exact. 500-record segments: about four per master."""
    seed_data.seed(cluster_source.cluster_client(), 6000, seed=16, big_keys=False, short_ttl_keys=0)
    dump = ("dump", "--source", cluster_source.url(), "--run-dir", run_dir, "--workers", 3, "--segment-records", 500)

    def mid_dump() -> bool:  # a segment is durable (500 records, or a master's last), and not every master done
        masters = dump_ledger(run_dir).get("masters", {}).values()
        written = (run_dir / "segments").is_dir() and any((run_dir / "segments").iterdir())
        return bool(masters) and written and not all(m["done"] for m in masters)

    kill_when((*dump, "--scan-count", 20), mid_dump, [])  # small batches, so that the kill lands mid-dump
    assert not all(m["done"] for m in dump_ledger(run_dir)["masters"].values())
    assert spawn(*dump, timeout=240).exit_code == 0
    segments = len(list((run_dir / "segments").iterdir()))
    replay = ("replay", "--target", serverless_target.url(), "--run-dir", run_dir, "--workers", 3)
    kill_when((*replay, "--max-ops-per-sec", 3000),  # 1,000 keys/s per worker: about 0.5 s per segment
              lambda: 1 <= len(ledger(run_dir, "replay").get("segments_done", [])) < segments, [])
    resumed = spawn(*replay, timeout=240)
    assert resumed.exit_code == 0, str(resumed)
    assert_same(snapshot(cluster_source), snapshot(serverless_target))
    status = json.loads(spawn("status", "--run-dir", run_dir, "--json").stdout)["counts"]
    assert status["restored"] + status["struct_written"] == 6000, status  # each key once, resumes or not


@pytest.fixture
def ssm(aws, aws_calls):  # noqa: F811
    client = own_client("ssm")
    client.put_parameter(Name=ENDPOINT, Value="old-redis.storefront.internal", Type="String")
    client.put_parameter(Name=PORT, Value="6379", Type="String")
    return client


def test_a_copy_split_by_slots_is_exact_and_cutover_takes_both_run_dirs(cluster_source, serverless_target, ssm,
                                                                         tmp_path):
    """Two `run`s, as two ECS tasks would: each copies and verifies its half of the slots in its own run dir (the
    second finds the first's keys on the target, outside its range: no --allow-nonempty-target needed); cutover
    checks that they cover every slot once and that both verified equal, and records to both."""
    seed_data.seed(cluster_source.cluster_client(), 4000, seed=17, short_ttl_keys=0)
    source, target = cluster_source.url(), serverless_target.url()
    halves = {"0-8191": tmp_path / "low", "8192-16383": tmp_path / "high"}
    for slots, run_dir in halves.items():
        summary = run_json("run", "--source", source, "--target", target, "--run-dir", run_dir, "--slots", slots)
        assert summary["verify"]["equal"], summary
        wanted = SlotRanges.parse(slots)
        copied = snapshot(serverless_target)
        assert in_slots(copied, wanted) and len(in_slots(copied, wanted)) == summary["restored"] + summary["expired"]
        assert_same(in_slots(snapshot(cluster_source), wanted), in_slots(copied, wanted))
    assert_same(snapshot(cluster_source), snapshot(serverless_target))
    again = invoke("run", "--source", source, "--target", target, "--run-dir", tmp_path / "again", "--slots",
                   "0-8191", code=1)   # that range is not empty on the target any more
    assert "keys in slots 0-8191" in again.output, again.output
    low, high = halves.values()
    refused = invoke("cutover", "--env", ENV, "--target", target, "--run-dir", low, code=2)
    assert "8192-16383" in refused.output and "uncovered" in refused.output
    assert ssm.get_parameter(Name=ENDPOINT)["Parameter"]["Value"] == "old-redis.storefront.internal"
    invoke("cutover", "--env", ENV, "--target", target, "--run-dir", low, "--run-dir", high)
    assert ssm.get_parameter(Name=ENDPOINT)["Parameter"]["Value"] == "127.0.0.1"
    assert ssm.get_parameter(Name=PORT)["Parameter"]["Value"] == str(serverless_target.first.port)
    assert all((run_dir / "cutover.json").exists() for run_dir in (low, high))
    invoke("rollback", "--env", ENV, "--run-dir", high)
    assert ssm.get_parameter(Name=ENDPOINT)["Parameter"]["Value"] == "old-redis.storefront.internal"


def test_cutover_refuses_overlapping_run_dirs_naming_the_slots(ssm, serverless_target, tmp_path):
    dirs = []
    for name, slots in (("a", "0-8191"), ("b", "8192-16383"), ("c", "100-199")):
        run_dir = RunDir(tmp_path / name, create=True)
        RunLedger.load(run_dir).bind_slots(slots)
        dirs += ["--run-dir", run_dir.path]
    refused = invoke("cutover", "--env", ENV, "--target", serverless_target.url(), *dirs, code=2)
    assert "100-199" in refused.output and "more than once" in refused.output
    assert ssm.get_parameter(Name=ENDPOINT)["Parameter"]["Value"] == "old-redis.storefront.internal"


def test_other_slots_on_the_same_run_dir_are_refused(standalone_source, serverless_target, run_dir):
    seed_data.seed(standalone_source.client(), 500, seed=18, big_keys=False, short_ttl_keys=0)
    source = standalone_source.url()
    summary = run_json("dump", "--source", source, "--run-dir", run_dir, "--slots", "0-8191")
    wanted = SlotRanges.parse("0-8191")
    assert summary["dump"]["dumped"] == len(in_slots(snapshot(standalone_source), wanted))
    for command in (("dump", "--source", source, "--run-dir", run_dir, "--slots", "0-100"),
                    ("dump", "--source", source, "--run-dir", run_dir),
                    ("replay", "--target", serverless_target.url(), "--run-dir", run_dir, "--slots", "8192-16383"),
                    ("verify", "--source", source, "--target", serverless_target.url(), "--run-dir", run_dir,
                     "--slots", "1-2")):
        assert_clean_error(spawn(*command), 2, "slots")
    assert_clean_error(spawn("dump", "--source", source, "--run-dir", run_dir, "--slots", "9-3"), 2, "--slots")
    assert RunLedger.load(RunDir(run_dir)).slots == "0-8191"
    assert SLOT_COUNT == 16384


@pytest.fixture
def restartable_target(bed_dir, certs):
    """A one-node TLS cluster of this test's own, to restart without disturbing the shared target."""
    node = testbed.start_cluster(bed_dir / "restartable-workers", 1, password=TARGET_PASSWORD, certs=certs)
    yield node
    node.stop()


def test_a_target_restarted_mid_replay_with_workers_ends_exact(cluster_source, restartable_target, run_dir):
    """A target node restarts (losing what it had not saved) while replay workers write: a worker sees the
    witnesses gone, and the replay writes every segment again (or stops clearly, and a rerun finishes).
    4,500 keys in 500-record segments make three segments per source master, so the restart lands after a
    first segment is done and before the replay ends (with one segment per master it often came after the end)."""
    node = restartable_target.first
    node.flush()
    seed_data.seed(cluster_source.cluster_client(), 4500, seed=19, big_keys=False, short_ttl_keys=0)
    assert spawn("dump", "--source", cluster_source.url(), "--run-dir", run_dir, "--segment-records", 500,
                 "--scan-count", 100).exit_code == 0
    replay = ("replay", "--target", restartable_target.url(), "--run-dir", run_dir, "--workers", 3)
    process = popen(*replay, "--max-ops-per-sec", 3000)  # 1,000 keys/s per worker: about 0.5 s per segment
    try:
        deadline = time.monotonic() + 60
        while not ledger(run_dir, "replay").get("segments_done"):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)
        assert process.poll() is None, "the replay ended before the restart: the scenario did not happen"
        node.stop()
        time.sleep(0.3)
        node.start()
        _, err = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        (node.directory / "dump.rdb").unlink(missing_ok=True)
    if process.returncode != 0:  # a clear stop is allowed; then a rerun must finish the job
        assert "Traceback" not in err and "hint:" in err, err
        rerun = spawn(*replay, timeout=240)
        assert rerun.exit_code == 0, str(rerun)
    assert_same(snapshot(cluster_source), snapshot(restartable_target))
