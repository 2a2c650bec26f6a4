"""verify --against-dump on real servers: single differences among many keys, and keys dumped twice."""

from __future__ import annotations

import time

from migrate.datapath.segments import STRUCT, Record, SegmentWriter
from migrate.datapath.store import list_segments, segment_id, write_segment
from migrate.rundir import RunDir
from test_verify import copy, kinds, seeded, verify


def test_each_single_difference_among_many_keys_is_found_and_named(standalone_source, serverless_target, run_dir):
    client = seeded(standalone_source, keys=20_000, short_ttl_keys=0)
    client.set("t:value", "before")
    client.set("t:missing", "here")
    client.set("t:ttl", "timed", px=3_600_000)
    copy(standalone_source, serverless_target, run_dir)
    args = ("--target", serverless_target.url(), "--run-dir", run_dir, "--against-dump", "--rounds", 1)
    code, result = verify(*args)
    assert code == 0, result
    target = serverless_target.first.client()
    target.set("t:value", "after!")            # same type, length and TTL: only the value tells
    target.delete("t:missing")
    target.set("t:extra", "1")
    target.pexpire("t:ttl", 7_200_000)
    target.hset("big:catalog:prices", "sku-1", "0.01")
    code, result = verify(*args)
    assert code == 1 and kinds(result) == {b"t:value": "value", b"t:missing": "missing", b"t:extra": "extra",
                                           b"t:ttl": "ttl", b"big:catalog:prices": "value"}, result
    # the value changes need no descent: only the missing, extra and TTL keys' slots, and the few slots where SCAN
    # returned a key twice (either side's table still rehashing after the fresh writes), of ~11,000 holding keys
    assert result["counts"]["slots_compared_by_key"] < 300
    assert result["counts"]["source"]["keys"] > 20_000


def _append_segment(run_dir, records: list[Record]) -> None:
    """A later segment of master 0, as a resumed dump writes when it reads keys again."""
    directory = RunDir(run_dir)
    last = max(seq for master, seq in map(segment_id, list_segments(directory)) if master == 0)
    writer = SegmentWriter()
    for record in records:
        writer.add(record)
    write_segment(directory, 0, last + 1, writer.finish())


def test_a_key_dumped_twice_counts_as_its_last_record(standalone_source, serverless_target, run_dir):
    client = seeded(standalone_source, keys=3000, big_keys=False, short_ttl_keys=0)
    client.set("twice:value", "first")
    client.set("twice:gone", "kept")
    client.set("twice:struct", "as a payload")
    copy(standalone_source, serverless_target, run_dir)
    client.set("twice:value", "second")
    second = client.dump("twice:value")
    past = int(time.time() * 1000) - 60_000
    _append_segment(run_dir, [Record(b"twice:value", -1, second),   # read again, changed in between
                              Record(b"twice:gone", past, client.dump("twice:gone")),  # read again, expired since
                              Record(b"twice:struct", -1, kind=STRUCT, type="string", items=[b"as chunks"])])
    _append_segment(run_dir, [Record(b"span:list", -1, kind=STRUCT, type="list", items=[b"a", b"b"])])
    _append_segment(run_dir, [Record(b"span:other", -1, client.dump("twice:gone")),  # replayed before the chunk
                              Record(b"span:list", -1, kind=STRUCT, type="list", offset=2, first=False, items=[b"c"])])
    target = serverless_target.first.client()
    target.set("twice:struct", "as chunks")
    target.rpush("span:list", "a", "b", "c")  # a key's chunks across two segments make one value
    target.set("span:other", "kept")
    target.restore("twice:value", 0, second, replace=True)  # what replay of the later segment writes
    args = ("--target", serverless_target.url(), "--run-dir", run_dir, "--against-dump", "--rounds", 1)
    code, result = verify(*args)
    assert code == 1 and kinds(result) == {b"twice:gone": "extra"}, result  # the target kept what expired
    assert result["counts"]["source"]["keys"] == result["counts"]["target"]["keys"] - 1  # each key once
    target.delete("twice:gone")
    code, result = verify(*args)
    assert code == 0, result
    assert result["counts"]["source"]["keys"] == result["counts"]["target"]["keys"]
    target.set("twice:value", "first")  # the earlier record's value: no longer what the dump holds
    code, result = verify(*args)
    assert code == 1 and kinds(result) == {b"twice:value": "value"}, result
    code, result = verify(*args, "--sample", 50)  # random keys of the dump, streamed (rarely twice:value)
    assert result["sample"] == 50 and 50 <= result["counts"]["sampled"] <= 100, result
    serverless_target.flush()  # every slot differs: each dumped key is missing, once
    code, result = verify(*args)
    assert code == 1 and result["kinds"] == {"missing": result["counts"]["source"]["keys"]}, result["kinds"]
