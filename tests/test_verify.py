"""Verify on real servers: exact copies are equal, each kind of tampering is found and repaired."""

from __future__ import annotations

import base64
import json
import threading
import time

from click.testing import CliRunner

import seed_data
from conftest import SOURCE_PASSWORD, TARGET_PASSWORD
from migrate.cli import cli
from migrate.verify import digest


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def verify(*args):
    """Run `verify --json`; return the exit code and the parsed result."""
    result = invoke("verify", *args, "--json")
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def copy(source, target, run_dir):
    """Copy with the data path's own `run` (dump + replay)."""
    result = invoke("run", "--source", source.url(), "--target", target.url(), "--run-dir", run_dir, "--json")
    assert result.exit_code == 0, result.output


def hand_made(client) -> None:
    """One key of every type, with binary and UTF-8 names and TTLs, beside seed_data's keys."""
    client.set(b"hm:\x00\xffbin", b"\x00\x01\x02", px=3_600_000)
    client.set("hm:ключ:😀", "значение")
    client.hset("hm:hash", mapping={"a": "1", "b": "2", "ü": "\xff"})
    client.rpush("hm:list", "c", "a", "b", "a")
    client.sadd("hm:set", "x", "y", "z")
    client.zadd("hm:zset", {"one": 1.0, "tenth": 0.1, "big": 1e300})
    client.xadd("hm:stream", {"f": "v"}, id="1-1")
    client.xadd("hm:stream", {"f": "w"}, id="2-1")
    client.xgroup_create("hm:stream", "readers", id="1-1")
    client.pexpire("hm:list", 7_200_000)


def seeded(source, keys=2000, **kwargs):
    client = source.cluster_client() if hasattr(source, "nodes") else source.client()
    seed_data.seed(client, keys, seed=5, **kwargs)
    hand_made(client)
    return client


def kinds(result) -> dict[bytes, str]:
    return {base64.b64decode(d["key"]): d["kind"] for d in result["first_differences"]}


def test_exact_copy_to_serverless_is_equal_then_tampering_is_found_and_repaired(
        standalone_source, serverless_target, run_dir):
    seeded(standalone_source, short_ttl_keys=0)
    copy(standalone_source, serverless_target, run_dir)
    args = ("--source", standalone_source.url(), "--target", serverless_target.url(), "--run-dir", run_dir)
    code, result = verify(*args)
    assert code == 0 and result["equal"], result
    assert result["counts"]["source"]["keys"] == result["counts"]["target"]["keys"] > 2000
    saved = json.loads((run_dir / "verify.json").read_text())
    assert saved["equal"] is True and saved["sample"] is None and TARGET_PASSWORD not in json.dumps(saved)
    assert isinstance(saved["finished_at"], float) and saved["differences"] == 0 and saved["counts"]

    target = serverless_target.first.client()
    target.set("hm:ключ:😀", "changed")                         # value
    target.delete(b"hm:\x00\xffbin")                            # missing
    target.set("hm:only-on-target", "x")                        # extra
    target.pexpire("hm:hash", 10_000_000)                       # ttl
    target.delete("hm:set")
    target.rpush("hm:set", "x")                                 # type
    target.delete("hm:list")
    target.rpush("hm:list", "a", "b", "a", "c")                 # list reordered
    target.pexpire("hm:list", 7_200_000)
    target.zadd("hm:zset", {"tenth": 0.1 + 1e-9})               # zset score by 1e-9
    target.xgroup_destroy("hm:stream", "readers")               # stream group dropped
    code, result = verify(*args)
    assert code == 1 and not result["equal"]
    assert kinds(result) == {
        "hm:ключ:😀".encode(): "value", b"hm:\x00\xffbin": "missing", b"hm:only-on-target": "extra",
        b"hm:hash": "ttl", b"hm:set": "type", b"hm:list": "value", b"hm:zset": "value", b"hm:stream": "value"}
    lines = [json.loads(line) for line in (run_dir / "verify-report.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and {line["kind"] for line in lines} == {"value", "missing", "extra", "ttl", "type"}

    code, result = verify(*args, "--repair", "--delete-extra")
    assert code == 0 and result["equal"], result
    assert result["repaired"]["recopied"] == 7 and result["repaired"]["deleted"] == 1
    code, result = verify(*args)
    assert code == 0, result


def test_cluster_source_to_cluster_target(cluster_source, cluster_target, run_dir):
    seeded(cluster_source, keys=1500, big_keys=False, short_ttl_keys=0)
    copy(cluster_source, cluster_target, run_dir)
    args = ("--source", cluster_source.url(), "--target", cluster_target.url(), "--run-dir", run_dir)
    code, result = verify(*args)
    assert code == 0, result
    assert len(result["counts"]["source"]["masters"]) == 3 and len(result["counts"]["target"]["masters"]) == 3
    target = cluster_target.cluster_client()
    target.pexpireat("hm:list", cluster_source.cluster_client().pexpiretime("hm:list") + 1500)
    code, result = verify(*args)
    assert code == 0, result                        # 1.5 s is within the default 2 s tolerance
    target.hset("hm:hash", "a", "changed")
    code, result = verify(*args, "--ttl-tolerance", 500)
    assert code == 1 and kinds(result) == {b"hm:hash": "value", b"hm:list": "ttl"}, result
    code, result = verify(*args, "--ttl-tolerance", 500, "--repair")
    assert code == 0 and result["repaired"]["recopied"] == 2, result


def test_old_target_is_equal_despite_other_encodings(standalone_source, old_target, run_dir):
    client = seeded(standalone_source, keys=1000, short_ttl_keys=0)
    client.sadd("hm:bigset", *range(1000))          # hashtable/intset encodings differ between 7.0 and 6.2
    client.hset("hm:bighash", mapping={f"f{i}": i for i in range(600)})
    copy(standalone_source, old_target, run_dir)
    code, result = verify("--source", standalone_source.url(), "--target", old_target.url())
    assert code == 0, result
    assert result["counts"]["slots_compared_by_key"] < 100  # PTTL-derived expiries: few keys near a cell border


def test_bad_input_exits_2_without_traceback_or_password(standalone_source, serverless_target, tmp_path):
    wrong = standalone_source.url().replace(SOURCE_PASSWORD, "wrong-Pa55word")
    result = invoke("verify", "--source", wrong, "--target", serverless_target.url())
    assert result.exit_code == 2
    assert "Traceback" not in result.output and "wrong-Pa55word" not in result.output
    assert TARGET_PASSWORD not in result.output and "authentication" in result.output
    result = invoke("verify", "--target", serverless_target.url(), "--against-dump")
    assert result.exit_code == 2 and "--run-dir" in result.output and "Traceback" not in result.output
    result = invoke("verify", "--target", serverless_target.url(), "--against-dump", "--run-dir", tmp_path)
    assert result.exit_code == 2 and "no dump" in result.output


def test_against_dump_with_the_source_stopped(standalone_source, serverless_target, run_dir):
    client = seeded(standalone_source, keys=1500, short_ttl_keys=0)
    client.set("hm:soon", "gone", px=1500)   # dumped with its TTL, expires before the verify
    copy(standalone_source, serverless_target, run_dir)
    standalone_source.stop()
    time.sleep(1.6)
    args = ("--target", serverless_target.url(), "--run-dir", run_dir, "--against-dump")
    code, result = verify(*args)
    assert code == 0, result
    assert result["source"] == "dump" and result["counts"]["source"]["keys"] == result["counts"]["target"]["keys"]
    assert result["counts"]["dump_same_payload"] > 1000 and result["counts"]["dump_decoded_on_target"] > 0
    target = serverless_target.first.client()
    target.hset("hm:hash", "a", "changed")
    target.delete("big:audit:log")
    target.set("hm:extra", "1")
    code, result = verify(*args)
    assert code == 1 and kinds(result) == {b"hm:hash": "value", b"big:audit:log": "missing", b"hm:extra": "extra"}
    code, result = verify(*args, "--repair", "--delete-extra")
    assert code == 0, result


def test_sample_checks_random_keys(standalone_source, serverless_target, run_dir):
    seeded(standalone_source, keys=1000, big_keys=False, short_ttl_keys=0)
    copy(standalone_source, serverless_target, run_dir)
    code, result = verify("--source", standalone_source.url(), "--target", serverless_target.url(),
                          "--run-dir", run_dir, "--sample", 50)
    assert code == 0 and result["sample"] == 50 and 50 <= result["counts"]["sampled"] <= 100
    assert json.loads((run_dir / "verify.json").read_text())["sample"] == 50
    serverless_target.flush()
    code, result = verify("--source", standalone_source.url(), "--target", serverless_target.url(), "--sample", 50)
    assert code == 1 and set(result["kinds"]) == {"missing"} and result["differences"] >= 45


def test_keys_expiring_during_verify_are_not_differences(standalone_source, serverless_target, run_dir):
    client = seeded(standalone_source, keys=1000, big_keys=False, short_ttl_keys=0)
    for index in range(50):
        client.set(f"otp:{index}", index, px=1200 + 20 * index)  # expire over the next 1.2 to 2.2 s
    copy(standalone_source, serverless_target, run_dir)
    deadline = time.monotonic() + 3
    results = []
    while time.monotonic() < deadline:
        results.append(verify("--source", standalone_source.url(), "--target", serverless_target.url(),
                              "--rounds", 1))
    assert all(code == 0 for code, _ in results), [r for _, r in results if not r["equal"]][:1]
    assert sum(r["counts"]["expired"] for _, r in results) > 0  # some expired between the two sides' reads


def test_concurrent_writer_gives_changing_never_missing(standalone_source, serverless_target, run_dir):
    client = seeded(standalone_source, keys=1000, big_keys=False, short_ttl_keys=0)
    hot = [f"hot:{n}" for n in range(5)]
    for key in hot:
        client.set(key, 0)
    copy(standalone_source, serverless_target, run_dir)
    stop = threading.Event()
    writes = []

    def writer():
        client = standalone_source.client()
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            for key in hot:
                client.incr(key)
            writes.append(time.monotonic())
            time.sleep(0.005)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        code, result = verify("--source", standalone_source.url(), "--target", serverless_target.url(),
                              "--run-dir", run_dir, "--rounds", 3)
    finally:
        stop.set()
        thread.join()
    longest_pause = max(b - a for a, b in zip(writes, writes[1:]))
    assert code == 1 and kinds(result) == {key.encode(): "changing" for key in hot}, (longest_pause, result)


def test_against_dump_of_struct_records_into_the_old_target(standalone_source, old_target, run_dir):
    client = seeded(standalone_source, keys=800, short_ttl_keys=0)
    client.xadd("hm:empty-stream", {"f": "v"}, id="5-1")
    client.xdel("hm:empty-stream", "5-1")             # a stream with groups and no entries
    client.xgroup_create("hm:empty-stream", "g", id="5-1")
    copy(standalone_source, old_target, run_dir)     # 7.0 payloads cannot go into 6.2: all struct records
    standalone_source.stop()
    args = ("--target", old_target.url(), "--run-dir", run_dir, "--against-dump")
    code, result = verify(*args)
    assert code == 0, result
    target = old_target.first.client()
    target.xgroup_setid("{edge}:stream", "fulfillment", "0-0")
    target.zadd("big:leaderboard:alltime", {"player:7": 1e9})
    code, result = verify(*args)
    assert code == 1 and kinds(result) == {b"{edge}:stream": "value", b"big:leaderboard:alltime": "value"}, result


def test_digests_do_not_depend_on_windows_order_or_score_text():
    def streamed(kind, chunks, dedupe=False):
        state = digest.new_digest(kind, dedupe)
        for chunk in chunks:
            state.update(chunk)
        return state.intdigest()

    items = [b"%d" % n for n in range(10)]
    assert streamed("list", [items[:3], items[3:]]) == digest.digest_list(items) != digest.digest_list(items[::-1])
    assert streamed("string", [b"ab", b"c"]) == digest.digest_string(b"abc")
    assert streamed("set", [items[5:], items[:5], items[:2]], dedupe=True) == digest.digest_set(items)
    flat = [b"f1", b"v1", b"f2", b"v2"]
    assert streamed("hash", [flat[2:], flat[:2]]) == digest.digest_hash(flat)
    assert digest.digest_hash(flat) != digest.digest_hash([b"f1", b"v2", b"f2", b"v1"])
    zset = [b"a", b"0.10000000000000001", b"b", b"inf"]
    assert digest.digest_zset(zset) == digest.digest_zset([b"b", b"+inf", b"a", b"0.1"])
    assert digest.digest_zset(zset) != digest.digest_zset([b"a", repr(0.1 + 1e-9).encode(), b"b", b"inf"])
    assert digest.digest_list([]) != digest.digest_set([]) != digest.digest_hash([])
    one, two = digest.new_digest("stream"), digest.new_digest("stream")
    for state, groups in ((one, [(b"g1", b"1-1"), (b"g2", b"0-0")]), (two, [(b"g2", b"0-0"), (b"g1", b"1-1")])):
        state.update([(b"1-1", [b"f", b"v"])])
        for name, last in groups:
            state.add_group(name, last)
    assert one.intdigest() == two.intdigest()
    one.add_group(b"g2", b"1-1")
    assert one.intdigest() != two.intdigest()
