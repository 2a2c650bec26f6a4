"""The run dir's ledgers without any server: load, save, corruption, each typed ledger's round trip, the
on-disk format that older run dirs hold, the cutover's verify gate, and the stage summaries read from them."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest

from migrate.cloud.cutover import Target, ignored_databases_check, verify_gate
from migrate.datapath import witness
from migrate.errors import BadInput
from migrate.pipeline import judge_skipped, redo, status, summarize
from migrate.rundir import (
    CHECKSUM_FIELD,
    CutoverLedger,
    CutoverRecord,
    DumpCounts,
    DumpLedger,
    PlanLedger,
    ReplayCounts,
    ReplayLedger,
    RunDir,
    RunLedger,
    VerifyLedger,
    _checksum,
)
from migrate.sync.protocol import SyncLedger, process_host

HOUR = 3600.0
TARGET = Target("cache.example.com", 6379)


@pytest.fixture
def rd(tmp_path) -> RunDir:
    return RunDir(tmp_path / "run", create=True)


def sealed(body: dict) -> bytes:
    return json.dumps({**body, CHECKSUM_FIELD: _checksum(body)}).encode()


# --- load, save, corruption ----------------------------------------------------------------------------

def test_a_ledger_round_trips_with_a_checksum_in_a_private_file(rd):
    rd.write("dump", {"a": 1, "b": [1, 2]})
    assert rd.read("dump") == {"a": 1, "b": [1, 2]}
    on_disk = json.loads((rd.path / "dump.json").read_text())
    assert on_disk[CHECKSUM_FIELD] == _checksum({"a": 1, "b": [1, 2]})
    assert stat.S_IMODE(os.stat(rd.path / "dump.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(rd.path).st_mode) == 0o700
    assert [p.name for p in rd.path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_a_ledger_never_written_reads_as_absent(rd):
    assert rd.read("replay") is None
    ledger = ReplayLedger.load(rd)
    assert not ledger.found and ledger.state == "not started" and ledger.done == set()


@pytest.mark.parametrize("content, why", [
    (b'{"cursor": 5}', "it has no checksum"),
    (sealed({"cursor": 5}).replace(b'"cursor": 5', b'"cursor": 6'), "checksum mismatch"),
    (b'{"cursor": 5', "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (json.dumps([1, 2]).encode(), "not a JSON object"),
])
def test_a_corrupt_ledger_is_refused_with_a_hint_by_every_reader(rd, content, why):
    (rd.path / "dump.json").write_bytes(content)
    for read in (lambda: rd.read("dump"), lambda: DumpLedger.load(rd), lambda: summarize(rd)):
        with pytest.raises(BadInput) as refused:
            read()
        assert why in refused.value.message and "dump.json" in refused.value.message
        assert "move dump.json aside" in refused.value.hint
        assert refused.value.exit_code == 2


def test_a_missing_run_dir_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        RunDir(tmp_path / "nowhere")


def test_forget_removes_the_file(rd):
    VerifyLedger(rd).record({"equal": True})
    VerifyLedger(rd).forget()
    VerifyLedger(rd).forget()  # twice is fine
    assert not (rd.path / "verify.json").exists() and not VerifyLedger.load(rd).found


# --- run.json ------------------------------------------------------------------------------------------

def test_run_ledger_binds_once_and_refuses_another_endpoint(rd):
    rd.bind("source", {"url": "redis://a:6379", "db": 0})
    rd.bind("source", {"url": "redis://a:6379", "db": 0})
    rd.bind("target", {"url": "rediss://t:6379"})
    with pytest.raises(BadInput, match="was made for source") as refused:
        RunLedger.load(rd).bind("source", {"url": "redis://b:6379", "db": 0})
    assert "new --run-dir" in refused.value.hint
    run = rd.read("run")
    assert run["source"] == {"url": "redis://a:6379", "db": 0} and run["target"] == {"url": "rediss://t:6379"}
    assert run["created"] <= time.time()


def test_run_ledger_keeps_the_operators_decisions(rd):
    run = RunLedger.load(rd)
    assert not run.skipped_accepted and run.ignored_databases is None and run.describe() == {}
    run.accept_skipped(True)
    run.ignore_databases(3, {0: 10, 5: 2})
    again = RunLedger.load(rd)
    assert again.skipped_accepted
    assert (again.ignored_databases.db, again.ignored_databases.others) == (3, {"0": 10, "5": 2})
    on_disk = rd.read("run")  # the format older run dirs hold
    assert on_disk["skipped_accepted"] is True
    assert on_disk["ignored_databases"]["others"] == {"0": 10, "5": 2} and on_disk["ignored_databases"]["db"] == 3
    again.accept_skipped(False)
    assert RunLedger.load(rd).skipped_accepted is False


# --- plan.json -------------------------------------------------------------------------------------------

def test_plan_ledger_round_trip(rd):
    assert not PlanLedger.load(rd).found
    PlanLedger(rd).record({"blockers": [{"problem": "p", "fix": "f"}], "estimate": {"keys": 3}})
    plan = PlanLedger.load(rd)
    assert plan.found and plan.blockers == [{"problem": "p", "fix": "f"}] and plan.plan["estimate"] == {"keys": 3}


# --- dump.json -------------------------------------------------------------------------------------------

OPTIONS = {"db": 0, "match": None, "types": [], "struct_all": False, "target_rdb": None}


def test_dump_ledger_round_trip(rd):
    ledger = DumpLedger.load(rd)
    ledger.restart(OPTIONS)
    ledger.add_masters(["a:1", "b:2"])
    assert (ledger.index("a:1"), ledger.index("b:2")) == (0, 1)
    ledger.master("a:1").checkpoint(77, 3, False, DumpCounts(scanned=10, dumped=9, vanished=1, bytes=100))
    ledger.record_skipped([(b"k\x00", "key name over 4 KiB")])
    ledger.supersede(["m000-00000003.seg", "m000-00000003.seg"])
    ledger.save()
    assert not ledger.done and not DumpLedger.load(rd).finished

    again = DumpLedger.load(rd)
    master = again.master("a:1")
    assert (master.cursor, master.next_seq, master.done, master.counts.scanned) == (77, 3, False, 10)
    assert again.options == OPTIONS and not again.struct_all and again.scanned_any
    assert again.superseded == ["m000-00000003.seg"]
    assert again.skipped_keys[0]["key"] == "k\\x00" and again.skipped_keys[0]["reason"] == "key name over 4 KiB"
    assert again.totals().dumped == 9 and again.state == "started"

    again.master("a:1").checkpoint(0, 4, True, DumpCounts(scanned=1, dumped=1))
    again.master("b:2").checkpoint(0, 1, True, DumpCounts(scanned=5, struct_keys=5))
    again.save()
    done = DumpLedger.load(rd)
    assert done.done and done.finished and done.state == "done" and done.seconds is not None
    assert (done.totals().scanned, done.totals().dumped, done.totals().struct_keys) == (16, 10, 5)


def test_the_segment_size_is_the_one_the_dump_started_with(rd):
    """--segment-records: asked for on a new dump, kept by a resume, refused when a resume asks for another;
    a run dir from before the option holds a dump of the default size."""
    from migrate.datapath.dump import SEGMENT_RECORDS, _segment_records
    ledger = DumpLedger.load(rd)
    ledger.restart(OPTIONS)
    ledger.add_masters(["a:1"])
    assert _segment_records(rd, ledger, None) == SEGMENT_RECORDS == 10_000
    assert _segment_records(rd, ledger, 500) == 500  # nothing scanned yet: any size
    ledger.keep_segment_records(500)
    ledger.master("a:1").checkpoint(77, 1, False, DumpCounts(scanned=600, dumped=600))
    ledger.save()
    resumed = DumpLedger.load(rd)
    assert resumed.segment_records == 500
    assert _segment_records(rd, resumed, None) == _segment_records(rd, resumed, 500) == 500
    with pytest.raises(BadInput) as refused:
        _segment_records(rd, resumed, 2000)
    assert "--segment-records 500" in refused.value.message and "--segment-records 500" in refused.value.hint
    older = DumpLedger(rd, {key: value for key, value in resumed._data.items() if key != "segment_records"})
    assert older.segment_records is None and _segment_records(rd, older, None) == 10_000
    with pytest.raises(BadInput):
        _segment_records(rd, older, 500)


def test_dump_ledger_keeps_the_first_skipped_keys_only(rd):
    ledger = DumpLedger.load(rd)
    ledger.restart(OPTIONS)
    ledger.record_skipped([(b"k%d" % i, "why") for i in range(5)], limit=3)
    ledger.record_skipped([(b"more", "why")], limit=3)
    assert [item["key"] for item in ledger.skipped_keys] == ["k0", "k1", "k2"]


def test_a_dump_ledger_as_older_versions_wrote_it_is_read(rd):
    rd.write("dump", {"options": OPTIONS, "order": ["n1"], "skipped_keys": [], "started_at": 100.0,
                      "finished_at": 160.5,
                      "masters": {"n1": {"cursor": 0, "next_seq": 2, "done": True,
                                         "counts": {"scanned": 4, "dumped": 3, "struct_keys": 1, "vanished": 0,
                                                    "bytes": 9, "skipped": {"module": 1}}}}})
    ledger = DumpLedger.load(rd)
    assert ledger.done and ledger.seconds == 60.5 and ledger.superseded == []
    assert ledger.totals().skipped == {"module": 1} and ledger.master("n1").next_seq == 2


# --- replay.json -----------------------------------------------------------------------------------------

def test_replay_ledger_round_trip(rd):
    ledger = ReplayLedger.load(rd)
    ledger.start(10)
    ledger.counts.add(ReplayCounts(restored=5, expired=1))
    ledger.mark_done("m000-00000000.seg", [["6b31", -1]], ReplayCounts(restored=5, expired=1))
    again = ReplayLedger.load(rd)
    assert again.started and again.target_rdb == 10 and not again.finished
    assert again.done == {"m000-00000000.seg"} and again.counts.restored == 5
    assert again.keys_by_segment == {"m000-00000000.seg": [5, 0, 1]} and again.witnesses == [["6b31", -1]]
    again.finish()
    finished_at = ReplayLedger.load(rd).finished_at
    again.finish()  # once only
    assert ReplayLedger.load(rd).finished_at == finished_at and ReplayLedger.load(rd).state == "done"


def test_replay_ledger_keeps_the_witnesses_of_the_latest_segments(rd):
    ledger = ReplayLedger.load(rd)
    for n in range(ReplayLedger.WITNESS_SEGMENTS_KEPT + 6):
        ledger.mark_done(f"s{n:03d}", [[(b"w%d" % n).hex(), -1]])
    ledger.mark_done("s010", [])  # a segment done again without witnesses drops its old ones
    kept = ReplayLedger.load(rd).witnesses
    assert len(kept) == ReplayLedger.WITNESS_SEGMENTS_KEPT - 1  # s006..s069, less s010
    assert kept[0] == [b"w6".hex(), -1] and kept[-1] == [b"w69".hex(), -1]
    assert [b"w10".hex(), -1] not in kept and [b"w11".hex(), -1] in kept


def test_witnesses_missing_from_the_target_are_found_from_the_ledger(rd):
    now_ms = int(time.time() * 1000)
    ledger = ReplayLedger.load(rd)
    ledger.mark_done("s1", [[b"kept".hex(), -1], [b"gone".hex(), -1], [b"expiring".hex(), now_ms + 1000]])
    present = {b"kept"}
    gone = witness.missing(ReplayLedger.load(rd).witnesses, lambda keys: [k in present for k in keys], now_ms)
    assert gone == [b"gone"]


def test_replay_ledger_forgets_done_segments_after_a_target_loss(rd):
    ledger = ReplayLedger.load(rd)
    ledger.start(10)
    ledger.counts.add(ReplayCounts(restored=4, retries=2))
    ledger.mark_done("s1", [["6b", -1]], ReplayCounts(restored=4))
    ledger.forget_done()
    again = ReplayLedger.load(rd)
    assert again.done == set() and again.witnesses == [] and again.keys_by_segment == {}
    assert again.target_losses == 1 and again.counts.restored == 0 and again.counts.retries == 2
    assert again.started


def test_redo_replay_keeps_only_the_start_mark(rd):
    ledger = ReplayLedger.load(rd)
    ledger.start(9)
    ledger.mark_done("s1", [["6b", -1]], ReplayCounts(restored=4))
    ledger.finish()
    VerifyLedger(rd).record({"equal": True, "finished_at": time.time()})
    redo(rd, "replay")
    assert set(rd.read("replay")) == {"segments_done", "counts", "started_at", "target_rdb"}
    again = ReplayLedger.load(rd)
    assert again.started and again.target_rdb == 9 and not again.finished and again.done == set()
    assert not VerifyLedger.load(rd).found


def test_redo_dump_forgets_the_dump_and_its_segments(rd):
    (rd.segments / "m000-00000000.seg").write_bytes(b"x")
    rd.write("dump", {"options": OPTIONS, "masters": {}})
    redo(rd, "dump")
    assert list(rd.segments.iterdir()) == [] and not DumpLedger.load(rd).found


# --- verify.json and cutover.json ------------------------------------------------------------------------

def verify_result(age: float = 60, **fields) -> dict:
    return {"finished_at": time.time() - age, "equal": True, "differences": 0, "sample": None,
            "source": "redis://:***@127.0.0.1:1/0", "target": "rediss://cache.example.com:6379", **fields}


def test_verify_ledger_round_trip(rd):
    VerifyLedger(rd).record(verify_result(age=0, skipped={"keys": 2}))
    ledger = VerifyLedger.load(rd)
    assert ledger.equal and ledger.differences == 0 and ledger.result["source"].endswith("1/0")
    verdict = ledger.verdict()
    assert verdict.target_address == ("cache.example.com", 6379) and verdict.skipped == 2 and verdict.sample is None
    assert ledger.passed_since(time.time() - 5) and not ledger.passed_since(time.time() + 5)


def test_cutover_record_round_trip_keeps_unknown_keys_and_writes_no_nulls(rd):
    record = CutoverRecord(env="prod", parameters={"endpoint": "/p/endpoint"}, state="cutover-started",
                           values_after={"endpoint": "h"}, started_at=1.0, last_run_id="r1", run_id="r1",
                           cutover_values={"endpoint": "h"}, extra={"future": 1})
    record.set_before({"endpoint": (4, "old-host")})
    CutoverLedger(rd).keep(record)
    on_disk = rd.read("cutover")
    assert on_disk["before"] == {"endpoint": {"value": "old-host", "version": 4}} and on_disk["future"] == 1
    assert "holding" not in on_disk and "error" not in on_disk and on_disk["redeployed"] == []
    again = CutoverLedger.load(rd).record
    assert again == record and again.before_versions() == {"endpoint": (4, "old-host")}
    assert status(rd)["stages"]["cutover"] == {"state": "cutover-started"}


# --- the cutover gate ------------------------------------------------------------------------------------

def gate(rd, max_age: float = HOUR):
    return verify_gate(rd, max_age, TARGET, time.time())


def test_the_gate_passes_a_fresh_full_equal_verify_of_this_target(rd):
    VerifyLedger(rd).record(verify_result(age=60))
    check = gate(rd)
    assert check.passed and "every key equal" in check.reason


@pytest.mark.parametrize("result, reason", [  # made when the test runs: the ages are from now
    (lambda: verify_result(age=2 * HOUR), "2h00m old (limit 60m)"),
    (lambda: verify_result(equal=False, differences=3), "found 3 differences"),
    (lambda: verify_result(sample=50), "a sample of 50 keys"),
    (lambda: verify_result(target="rediss://other.example.com:6379"), "not the cutover target"),
    (lambda: verify_result(target="rediss://cache.example.com:6380"), "not the cutover target"),
    (lambda: {"equal": True, "differences": 0}, "incomplete"),
    (lambda: verify_result(differences="many"), "incomplete"),
    (lambda: verify_result(target="rediss://cache.example.com:port"), "incomplete"),
])
def test_the_gate_refuses_a_stale_failed_partial_or_foreign_verify(rd, result, reason):
    VerifyLedger(rd).record(result())
    check = gate(rd)
    assert not check.passed and reason in check.reason and check.hint


def test_the_gate_refuses_without_a_verify_or_a_run_dir(rd):
    assert not gate(rd).passed and "no verify in" in gate(rd).reason
    refused = verify_gate(None, HOUR, TARGET, time.time())
    assert not refused.passed and "no --run-dir" in refused.reason


def test_the_gate_passes_skipped_keys_only_where_the_copy_accepted_them(rd):
    VerifyLedger(rd).record(verify_result(skipped={"keys": 2, "reasons": {"module": 2}}))
    refused = gate(rd)
    assert not refused.passed and "did not accept skipping them" in refused.reason
    assert "--skip-unsupported" in refused.hint
    RunLedger.load(rd).accept_skipped(True)
    passed = gate(rd)
    assert passed.passed and "2 key(s) skipped on purpose" in passed.reason


def test_the_gate_warns_about_databases_left_behind(rd):
    assert ignored_databases_check(rd) == [] and ignored_databases_check(None) == []
    RunLedger.load(rd).ignore_databases(0, {4: 12})
    [warning] = ignored_databases_check(rd)
    assert warning.passed and warning.warning and "db4: 12 keys" in warning.reason and "only db0" in warning.reason


# --- what status, summarize and judge_skipped read from the ledgers --------------------------------------

def test_counts_leave_superseded_segments_out_and_status_names_each_stage(rd):
    dump = DumpLedger.load(rd)
    dump.restart(OPTIONS)
    dump.add_masters(["n1"])
    dump.master("n1").checkpoint(0, 3, True, DumpCounts(scanned=10, dumped=10))
    dump.supersede(["m000-00000000.seg"])  # its 4 keys were read again into m000-00000001.seg
    dump.record_skipped([(b"big", "key name over 4 KiB")])
    dump.save()
    replay = ReplayLedger.load(rd)
    replay.start(10)
    for name, restored in (("m000-00000000.seg", 4), ("m000-00000001.seg", 6), ("m000-00000002.seg", 4)):
        keys = ReplayCounts(restored=restored)
        replay.counts.add(keys)
        replay.mark_done(name, [], keys)
    replay.finish()
    summary = summarize(rd)
    assert (summary["restored"], summary["rewritten"], summary["scanned"]) == (10, 4, 10)
    assert summary["dump_done"] and summary["replay_done"] and summary["skipped_keys"][0]["key"] == "big"
    stages = status(rd)["stages"]
    assert stages["dump"]["state"] == stages["replay"]["state"] == "done"
    assert stages["verify"] == {"state": "not started"} and stages["cutover"] == {"state": "not started"}
    VerifyLedger(rd).record(verify_result(equal=False, differences=2))
    assert status(rd)["stages"]["verify"]["state"] == "differences"


def test_judge_skipped_records_the_decision_and_refuses_unaccepted_skips(rd):
    dump = DumpLedger.load(rd)
    dump.restart(OPTIONS)
    dump.add_masters(["n1"])
    dump.master("n1").checkpoint(0, 1, True, DumpCounts(scanned=2, dumped=1, skipped={"module type": 1}))
    dump.record_skipped([(b"mod", "module type")])
    dump.save()
    refusal = judge_skipped(rd, accepted=False)
    assert refusal is not None and "1 key could not be migrated" in refusal.message and "mod" in refusal.message
    assert RunLedger.load(rd).skipped_accepted is False
    assert judge_skipped(rd, accepted=True) is None and RunLedger.load(rd).skipped_accepted is True
    assert status(rd)["run"]["skipped_accepted"] is True


def test_verify_knows_the_keys_both_stages_skipped_by_their_exact_id(rd):
    from migrate.keynames import key_id
    from migrate.verify.stage import skipped_on_purpose
    dump = DumpLedger.load(rd)
    dump.restart(OPTIONS)
    dump.record_skipped([(b"x" * 5000, "key name over 4 KiB")])
    dump.save()
    replay = ReplayLedger.load(rd)
    replay.counts.skip(b"mod", "module type not supported by the target")
    replay.save()
    rd.write("run", {})  # unrelated ledgers do not matter
    assert skipped_on_purpose(rd) == {key_id(b"x" * 5000): "key name over 4 KiB",
                                      key_id(b"mod"): "module type not supported by the target"}
    assert skipped_on_purpose(None) == {}


def test_a_sync_in_another_task_is_judged_by_its_heartbeat(rd):
    """A cutover in a second ECS task cannot see the sync task's pid: the heartbeat decides there; here
    (same host and pid namespace, or a sync.json from before `host`) a dead pid still means no sync."""
    no_such_pid = 2**22 + 12345  # above Linux's largest pid_max
    SyncLedger.load(rd).update(state="following", pid=no_such_pid, host="ip-10-0-1-7/4026532179",
                               heartbeat_at=time.time())
    assert SyncLedger.load(rd).running()
    SyncLedger.load(rd).update(heartbeat_at=time.time() - 10)
    assert not SyncLedger.load(rd).running() and SyncLedger.load(rd).crashed()
    for host in (process_host(), None):
        SyncLedger.load(rd).update(host=host, heartbeat_at=time.time())
        assert not SyncLedger.load(rd).running()
