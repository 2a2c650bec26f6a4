"""Data path on real servers: dump + replay copy every key, value and TTL exactly, and resume after kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from click.testing import CliRunner

import seed_data
from migrate.cli import cli
from snapshot import assert_same, snapshot
from testbed import free_port


def invoke(*args, env=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)
    return result


def run_json(*args):
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_standalone_to_serverless_is_exact(standalone_source, serverless_target, run_dir):
    seed_data.seed(standalone_source.client(), 3000, seed=7, short_ttl_keys=0)
    before = snapshot(standalone_source)
    summary = run_json("run", "--source", standalone_source.url(), "--target", serverless_target.url(),
                       "--run-dir", run_dir)
    accounted = summary["restored"] + summary["struct_written"] + summary["expired"] + summary["vanished"]
    assert accounted == len(before), summary
    assert_same(snapshot(standalone_source), snapshot(serverless_target))
    assert summary["skipped"] == {}


def test_cluster_to_cluster_is_exact(cluster_source, cluster_target, run_dir):
    seed_data.seed(cluster_source.cluster_client(), 3000, seed=3)
    summary = run_json("run", "--source", cluster_source.url(), "--target", cluster_target.url(),
                       "--run-dir", run_dir)
    assert summary["dump_done"] and summary["replay_done"]
    assert_same(snapshot(cluster_source), snapshot(cluster_target))


def test_old_target_takes_the_struct_path_and_is_exact(standalone_source, old_target, run_dir):
    seed_data.seed(standalone_source.client(), 1500, seed=11, short_ttl_keys=0)
    summary = run_json("run", "--source", standalone_source.url(), "--target", old_target.url(), "--run-dir", run_dir)
    assert summary["restored"] == 0
    assert summary["struct_written"] == summary["scanned"]
    assert_same(snapshot(standalone_source), snapshot(old_target))


def test_big_keys_are_chunked_and_exact(standalone_source, serverless_target, run_dir):
    seed_data.seed(standalone_source.client(), 200, seed=5, short_ttl_keys=0)
    summary = run_json("run", "--source", standalone_source.url(), "--target", serverless_target.url(),
                       "--run-dir", run_dir, "--max-payload", 64 * 1024)
    assert summary["struct_written"] >= 5  # the 2 MB and 1 MB strings, the 50k hash, 100k list, 30k zset
    assert_same(snapshot(standalone_source), snapshot(serverless_target))


def test_binary_and_utf8_keys_with_ttls(standalone_source, serverless_target, run_dir):
    client = standalone_source.client()
    keys = [b"\x00\xff\xfe bin", "ключ:😀".encode(), b"with space\nand newline", b"{tag}a", b"{tag}b", b""]
    for index, key in enumerate(keys):
        client.set(key, b"v%d\x00" % index, px=3_600_123 + index if index % 2 else None)
    run_json("run", "--source", standalone_source.url(), "--target", serverless_target.url(), "--run-dir", run_dir)
    assert_same(snapshot(standalone_source), snapshot(serverless_target), ttl_tolerance_ms=0)


def test_select_database_and_warn_about_the_others(standalone_source, serverless_target, run_dir):
    standalone_source.client(db=3).set("in-db-3", "x")
    standalone_source.client(db=5).set("in-db-5", "y")
    result = invoke("run", "--source", standalone_source.url(), "--target", serverless_target.url(),
                    "--run-dir", run_dir, "--db", 3, "--ignore-other-dbs")
    assert result.exit_code == 0, result.output
    assert "not migrated (db5: 1 keys)" in result.stderr
    target = snapshot(serverless_target)
    assert list(target) == [b"in-db-3"]


def test_match_and_type_filters(standalone_source, serverless_target, run_dir):
    client = standalone_source.client()
    client.set("session:1", "a")
    client.hset("session:2", "f", "v")
    client.set("cart:1", "b")
    run_json("run", "--source", standalone_source.url(), "--target", serverless_target.url(), "--run-dir", run_dir,
             "--match", "session:*", "--type", "string")
    assert set(snapshot(serverless_target)) == {b"session:1"}


def test_nonempty_target_is_refused_unless_allowed(standalone_source, serverless_target, run_dir, tmp_path):
    standalone_source.client().set("a", "1")
    serverless_target.first.client().set("already", "there")
    refused = invoke("run", "--source", standalone_source.url(), "--target", serverless_target.url(),
                     "--run-dir", run_dir)
    assert refused.exit_code == 1
    assert "already holds 1 keys" in refused.stderr
    assert "--allow-nonempty-target" in refused.stderr
    allowed = invoke("run", "--source", standalone_source.url(), "--target", serverless_target.url(),
                     "--run-dir", tmp_path / "run2", "--allow-nonempty-target")
    assert allowed.exit_code == 1, allowed.output  # the merge is done, and verify names the key the source lacks
    assert set(snapshot(serverless_target)) == {b"a", b"already"}
    assert "extra" in allowed.stdout


def test_corrupt_segment_is_bad_input_naming_the_file(standalone_source, serverless_target, run_dir):
    seed_data.seed(standalone_source.client(), 500, seed=2, big_keys=False)
    assert invoke("dump", "--source", standalone_source.url(), "--run-dir", run_dir).exit_code == 0
    segment = sorted((run_dir / "segments").iterdir())[0]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x40
    segment.chmod(0o600)
    segment.write_bytes(bytes(data))
    result = invoke("replay", "--target", serverless_target.url(), "--run-dir", run_dir)
    assert result.exit_code == 2
    assert segment.name in result.stderr and "checksum" in result.stderr
    assert "Traceback" not in result.output
    assert serverless_target.first.client().dbsize() == 0  # nothing of a corrupt segment is written


def test_second_run_on_a_locked_run_dir_is_refused(standalone_source, run_dir):
    from migrate.rundir import RunDir
    directory = RunDir(run_dir, create=True)
    with directory.lock():
        result = invoke("dump", "--source", standalone_source.url(), "--run-dir", run_dir)
    assert result.exit_code == 2
    assert f"locked by pid {os.getpid()}" in result.stderr


def test_run_dir_of_another_source_is_refused(standalone_source, cluster_source, run_dir):
    standalone_source.client().set("a", "1")
    assert invoke("dump", "--source", standalone_source.url(), "--run-dir", run_dir).exit_code == 0
    result = invoke("dump", "--source", cluster_source.url(), "--run-dir", run_dir)
    assert result.exit_code == 2
    assert "was made for source" in result.stderr


def test_passwords_never_appear_in_output_or_run_dir(standalone_source, serverless_target, run_dir):
    seed_data.seed(standalone_source.client(), 300, seed=4, big_keys=False)
    env = {"REDIS_MIGRATE_TARGET_PASSWORD": serverless_target.password}
    result = invoke("run", "--source", standalone_source.url(), "--target", serverless_target.first.url(0, False),
                    "--run-dir", run_dir, "--json", env=env)
    assert result.exit_code == 0, result.output
    wrong = invoke("dump", "--source", standalone_source.url().replace(standalone_source.password, "nope-wrong-pw"),
                   "--run-dir", run_dir.parent / "other")
    assert wrong.exit_code == 2 and "authentication failed" in wrong.stderr
    texts = [result.output, wrong.output] + [p.read_bytes().decode("latin-1") for p in run_dir.rglob("*.json")]
    for text in texts:
        assert standalone_source.password not in text and serverless_target.password not in text
        assert "nope-wrong-pw" not in text
    assert oct(run_dir.stat().st_mode & 0o777) == "0o700"
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in run_dir.rglob("*") if p.is_file())


def test_kill_9_at_random_moments_then_resume_is_exact(standalone_source, serverless_target, run_dir):
    seed_data.seed(standalone_source.client(), 16_000, seed=9, big_keys=False, short_ttl_keys=0)
    command = [sys.executable, "-m", "migrate.cli", "run", "--source", standalone_source.url(),
               "--target", serverless_target.url(), "--run-dir", str(run_dir), "--max-ops-per-sec", "6000",
               "--scan-count", "500", "--segment-records", "1000"]  # 16 segments: each kill lands between two
    kills = 0
    for delay in (0.4, 0.7, 1.0, 1.3):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(delay)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait()
    final = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert kills >= 3
    assert_same(snapshot(standalone_source), snapshot(serverless_target))


def test_target_out_of_memory_stops_with_a_clear_message(standalone_source, bed_dir, certs, run_dir):
    import testbed
    small = testbed.start_cluster(bed_dir / "small-target", 1, password="small-pw", certs=certs,
                                  extra=("--maxmemory", "3mb", "--maxmemory-policy", "noeviction"))
    try:
        seed_data.seed(standalone_source.client(), 3000, seed=1, big_keys=False)
        result = invoke("run", "--source", standalone_source.url(), "--target", small.url(), "--run-dir", run_dir)
        assert result.exit_code == 3
        assert "out of memory" in result.stderr and "DataStorage" in result.stderr
        assert "Traceback" not in result.output
    finally:
        small.stop()


def test_rate_limiter_holds_writes_to_the_cap():
    from migrate.datapath.replay import RateLimiter
    limiter = RateLimiter(1000)
    started = time.monotonic()
    for _ in range(5):
        limiter.acquire(100)
    assert time.monotonic() - started >= 0.45  # 500 writes at 1000/s cannot finish sooner


def test_status_reports_the_ledgers(standalone_source, serverless_target, run_dir):
    seed_data.seed(standalone_source.client(), 200, seed=8, big_keys=False, short_ttl_keys=0)
    run_json("run", "--source", standalone_source.url(), "--target", serverless_target.url(), "--run-dir", run_dir)
    status = run_json("status", "--run-dir", run_dir)
    assert status["stages"]["dump"]["state"] == status["stages"]["replay"]["state"] == "done"
    assert status["counts"]["restored"] == 200 == status["counts"]["scanned"]
    human = invoke("status", "--run-dir", run_dir)
    assert human.exit_code == 0 and "replay   done" in human.output


def test_rerun_skips_done_stages_and_redo_dump_picks_up_changes(standalone_source, serverless_target, run_dir):
    client = standalone_source.client()
    client.set("a", "1")
    args = ("run", "--source", standalone_source.url(), "--target", serverless_target.url(), "--run-dir", run_dir)
    run_json(*args)
    client.set("a", "2")
    client.set("b", "new")
    again = run_json(*args)
    assert again["restored"] == 1  # nothing redone: the run dir says both stages are done
    assert serverless_target.first.client().get("a") == b"1"
    run_json(*args, "--redo", "dump")
    assert_same(snapshot(standalone_source), snapshot(serverless_target))


def test_segments_are_never_rewritten_after_a_crash_between_segment_and_ledger(standalone_source, run_dir):
    """A segment that landed before its ledger update keeps its content; the resume writes a new one."""
    seed_data.seed(standalone_source.client(), 300, seed=6, big_keys=False, short_ttl_keys=0)
    assert invoke("dump", "--source", standalone_source.url(), "--run-dir", run_dir).exit_code == 0
    from migrate.rundir import RunDir
    ledger = RunDir(run_dir).read("dump")  # ledgers are checksummed: edit through RunDir
    master = next(iter(ledger["masters"].values()))
    master.update(cursor=0, done=False, next_seq=0)  # as if the crash came before the ledger write
    del ledger["finished_at"]
    RunDir(run_dir).write("dump", ledger)
    first = (run_dir / "segments" / "m000-00000000.seg").read_bytes()
    assert invoke("dump", "--source", standalone_source.url(), "--run-dir", run_dir).exit_code == 0
    assert (run_dir / "segments" / "m000-00000000.seg").read_bytes() == first
    assert (run_dir / "segments" / "m000-00000001.seg").exists()


def test_a_big_key_spills_over_several_segments_and_replays_exactly(standalone_source, serverless_target, run_dir,
                                                                     monkeypatch):
    from migrate.datapath import dump
    monkeypatch.setattr(dump, "SEGMENT_BYTES", 64 * 1024)
    client = standalone_source.client()
    client.rpush("big:list", *[b"item-%06d" % i for i in range(20_000)])
    client.hset("big:hash", mapping={f"f{i}": "x" * 20 for i in range(10_000)})
    run_json("run", "--source", standalone_source.url(), "--target", serverless_target.url(), "--run-dir", run_dir,
             "--max-payload", 4096)
    assert len(list((run_dir / "segments").iterdir())) > 4
    assert_same(snapshot(standalone_source), snapshot(serverless_target))


def test_run_resumes_a_dump_made_by_the_dump_command(standalone_source, serverless_target, run_dir):
    seed_data.seed(standalone_source.client(), 400, seed=12, big_keys=False, short_ttl_keys=0)
    assert invoke("dump", "--source", standalone_source.url(), "--run-dir", run_dir).exit_code == 0
    summary = run_json("run", "--source", standalone_source.url(), "--target", serverless_target.url(),
                       "--run-dir", run_dir)
    assert summary["verify"]["equal"] and summary["restored"] == 400


def test_plain_replay_of_newer_payloads_into_an_old_target_is_refused_before_writing(standalone_source, old_target,
                                                                                      run_dir):
    """A `dump` made without knowing the target holds Redis 7 payloads; an RDB 9 target cannot take them."""
    seed_data.seed(standalone_source.client(), 300, seed=13, big_keys=False, short_ttl_keys=0)
    assert invoke("dump", "--source", standalone_source.url(), "--run-dir", run_dir).exit_code == 0
    outcome = invoke("replay", "--target", old_target.url(), "--run-dir", run_dir)
    assert outcome.exit_code == 2, outcome.output
    assert "RDB version" in outcome.stderr and "--mode struct" in outcome.stderr
    assert old_target.first.client().dbsize() == 0


def test_a_key_read_as_struct_then_dumped_again_ends_with_the_later_value(standalone_source, serverless_target,
                                                                          run_dir):
    """SCAN may return a key twice. Replay writes a segment's DUMP records before its struct records, so
    a DUMP record that follows the same key's struct record must go to a later segment."""
    from migrate.datapath.dump import DumpCounts, DumpOptions, MasterDumper, open_ledger
    from migrate.datapath.segments import STRUCT, Record, read_segment
    from migrate.net.endpoints import Endpoint, discover
    from migrate.rundir import RunDir
    client = standalone_source.client()
    client.set("twice", "the later value")
    payload = client.dump("twice")
    topology = discover(Endpoint.from_url("source", standalone_source.url()))
    directory = RunDir(run_dir, create=True)
    ledger = open_ledger(directory, topology, DumpOptions())
    node = topology.masters[0]
    dumper = MasterDumper(directory, topology, 0, node, ledger.master(node.name), DumpOptions(), ledger)
    dumper.add(Record(b"twice", -1, kind=STRUCT, type="string", items=[b"the earlier, big value"]))
    dumper.add_dumps([b"twice"], [-1], [payload])
    dumper._commit(DumpCounts(scanned=1, dumped=1), cursor=0, finished=True)
    dumper._settle()  # the writer thread has written both segments and the ledger
    assert [len(read_segment(path)) for path in sorted((run_dir / "segments").iterdir())] == [1, 1]
    assert invoke("replay", "--target", serverless_target.url(), "--run-dir", run_dir).exit_code == 0
    assert serverless_target.first.client().get("twice") == b"the later value"


def _run_dir_state(run_dir) -> dict:
    """Every file of the run dir but the lock, with its bytes: what a refused command must leave as it was."""
    return {str(path.relative_to(run_dir)): path.read_bytes() for path in sorted(run_dir.rglob("*"))
            if path.is_file() and path.name != "lock"}


def test_redo_with_a_mistyped_source_is_refused_before_anything_is_forgotten(standalone_source, cluster_source,
                                                                             serverless_target, run_dir):
    """`run --redo dump` is the RUNBOOK's T-0 command: a wrong source must not cost the run dir its progress."""
    seed_data.seed(standalone_source.client(), 300, seed=9, big_keys=False, short_ttl_keys=0)
    target = ("--target", serverless_target.url(), "--run-dir", run_dir)
    run_json("run", "--source", standalone_source.url(), *target)
    before = _run_dir_state(run_dir)
    assert {"dump.json", "replay.json", "verify.json"} <= set(before) and any(k.startswith("segments/") for k in before)
    wrong_redis = invoke("run", "--source", cluster_source.url(), *target, "--redo", "dump")
    nobody_there = invoke("run", "--source", f"redis://:x@127.0.0.1:{free_port()}/0", *target, "--redo", "dump")
    wrong_password = invoke("run", "--source", standalone_source.url().replace("src-", "bad-"), *target,
                            "--redo", "dump")
    for refused in (wrong_redis, nobody_there, wrong_password):
        assert refused.exit_code == 2, refused.output
        assert "Traceback" not in refused.output
    assert _run_dir_state(run_dir) == before


def test_counts_after_a_resume_name_each_key_once(standalone_source, serverless_target, run_dir):
    """A crash between a segment and its checkpoint leaves a segment whose keys the resumed dump reads again.
    Replay applies both (harmless), but counts each key once and says how many writes were repeats."""
    seed_data.seed(standalone_source.client(), 300, seed=6, big_keys=False, short_ttl_keys=0)
    dump = ("dump", "--source", standalone_source.url(), "--run-dir", run_dir)
    replay = ("replay", "--target", serverless_target.url(), "--run-dir", run_dir)
    assert invoke(*dump).exit_code == 0
    from migrate.datapath.dump import DumpCounts
    from migrate.rundir import RunDir
    ledger = RunDir(run_dir).read("dump")  # as a crash before the first checkpoint leaves it:
    next(iter(ledger["masters"].values())).update(cursor=0, done=False, next_seq=0, counts=DumpCounts().to_dict())
    del ledger["finished_at"]
    RunDir(run_dir).write("dump", ledger)
    first = invoke(*replay)  # the orphan segment is applied before the dump resumes
    assert first.exit_code == 0, first.output
    assert invoke(*dump).exit_code == 0
    assert invoke(*replay).exit_code == 0
    counts = run_json("status", "--run-dir", run_dir)["counts"]
    assert counts["restored"] + counts["struct_written"] == 300 == counts["scanned"], counts
    assert counts["rewritten"] == 300, counts
    assert_same(snapshot(standalone_source), snapshot(serverless_target))


def test_segment_records_sizes_the_checkpoints_and_a_resume_keeps_it(standalone_source, serverless_target, run_dir):
    """--segment-records N: a checkpoint about every N keys (after whole SCAN batches). A dump stopped half way
    goes on with the size it started with; a resume asking for another size is exit 2 with a hint."""
    from migrate.datapath.reader import DumpOptions
    from migrate.datapath.segments import read_segment
    from migrate.rundir import DumpLedger, RunDir
    from reliability import assert_clean_error, half_dump
    from reliability import invoke as clean_invoke
    seed_data.seed(standalone_source.client(), 1200, seed=19, big_keys=False, short_ttl_keys=0)
    args = ("dump", "--source", standalone_source.url(), "--run-dir", run_dir, "--scan-count", 50)
    assert_clean_error(clean_invoke(*args, "--segment-records", 5), 2, "--segment-records")
    half_dump(standalone_source.url(), run_dir, DumpOptions(scan_count=50, segment_records=100), after=500)
    directory = RunDir(run_dir)
    half = DumpLedger.load(directory)
    assert half.segment_records == 100 and not half.done and 0 < half.totals().scanned < 1200
    refused = clean_invoke(*args, "--segment-records", 200)
    assert_clean_error(refused, 2, "--segment-records 100")
    assert invoke(*args).exit_code == 0  # no option: the size the dump started with
    assert DumpLedger.load(RunDir(run_dir)).segment_records == 100
    sizes = [len(read_segment(path)) for path in sorted((run_dir / "segments").glob("*.seg"))]
    assert len(sizes) >= 8 and all(size >= 100 for size in sizes[:-1]), sizes  # the last one ends the scan
    assert invoke("replay", "--target", serverless_target.url(), "--run-dir", run_dir).exit_code == 0
    assert_same(snapshot(standalone_source), snapshot(serverless_target))
