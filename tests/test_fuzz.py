"""Hypothesis-driven corruption of dump segments and run-dir ledgers.

Every example works on its own copy of a real run dir and runs the real CLI against the real
target. The outcome must be a clear error (exit 2/3 with a hint, never "unexpected", never a
traceback) or, when the change is benign, a correct result checked with tests/snapshot.py. Never a
hang (pytest-timeout), never a silent partial success.

Corruptions: truncation, bit flips, splices, random bytes and insertions on segment files; the same
on the JSON ledgers; re-indented ledgers (benign); duplicated segments (benign); "resealed" segments
whose body was changed and whose checksum was recomputed (a buggy writer: the codec's checksum
cannot catch it, so only "no crash, no hang" is required there); and hand-edited ledgers without
checksum whose values changed type.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
import xxhash
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seed_data
from migrate.datapath import dump as dump_module
from migrate.datapath.segments import (
    CHUNK_TYPES,
    DUMP,
    END,
    MAGIC,
    STRUCT,
    TRAILER,
    Record,
    SegmentWriter,
    decode_body,
    read_segment,
)
from migrate.errors import BadInput
from migrate.rundir import CHECKSUM_FIELD, RunDir
from reliability import half_dump, invoke
from snapshot import assert_same, snapshot

# 60 fixed (derandomized) examples per CLI-level test keep the file under a minute; FUZZ_EXAMPLES=400
# runs a longer, randomized hunt.
HUNT = int(os.environ.get("FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=HUNT or 60, deadline=None, derandomize=not HUNT, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def world(_standalone_source, _serverless_target, tmp_path_factory):
    """A seeded source, its snapshot, and three run dirs: a finished dump, a half dump, a finished run."""
    source, target = _standalone_source, _serverless_target
    source.flush()
    target.flush()
    client = source.client()
    seed_data.seed(client, 220, seed=81, big_keys=False, short_ttl_keys=0)
    client.rpush("fuzz:list", *[b"item-%05d" % i for i in range(2500)])  # struct chunks (--max-payload 1024)
    client.hset("fuzz:hash", mapping={f"f{i}": f"v{i}" for i in range(1500)})
    expected = snapshot(source)
    base = tmp_path_factory.mktemp("fuzz-bases")
    common = ("--scan-count", 25, "--max-payload", 1024, "--segment-records", 40)  # several segments per run dir
    outcome = invoke("dump", "--source", source.url(), "--run-dir", base / "dumped", *common)
    assert outcome.exit_code == 0, outcome
    _half_dump(source, base / "half")
    target.flush()
    outcome = invoke("run", "--source", source.url(), "--target", target.url(), "--run-dir", base / "done", *common)
    assert outcome.exit_code == 0, outcome
    target.flush()
    assert len(list((base / "dumped" / "segments").glob("*.seg"))) >= 4
    return {"source": source, "target": target, "expected": expected, "base": base, "common": common}


def _half_dump(source, run_dir: Path) -> None:
    """A dump stopped after a few segments: its ledger has a cursor in the middle of the keyspace."""
    half_dump(source.url(), run_dir, dump_module.DumpOptions(scan_count=25, max_payload=1024, segment_records=40),
              after=150)
    directory = RunDir(run_dir)
    ledger = directory.read("dump")
    assert ledger and not ledger.get("finished_at")
    assert any(m["cursor"] for m in ledger["masters"].values())


def work_copy(world, name: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-")) / "run"
    shutil.copytree(world["base"] / name, path)
    return path


def check(outcome, world, benign: bool | None, exact_required: bool = True) -> None:
    """The contract: clear error, or (benign) exact; never a crash or a silent partial success.

    benign: True (must succeed, exactly), False (must fail clearly), None (either)."""
    assert "Traceback" not in outcome.output, str(outcome)
    assert "unexpected" not in outcome.stderr, str(outcome)
    if outcome.exit_code == 0:
        assert benign is not False or not exact_required, f"a corrupted run dir went green:\n{outcome}"
        if exact_required:
            assert_same(world["expected"], snapshot(world["target"]))
    else:
        assert outcome.exit_code in (2, 3), str(outcome)
        assert "hint:" in outcome.stderr, str(outcome)
        assert benign is not True, f"a benign change was refused:\n{outcome}"


# --- mutations -------------------------------------------------------------------------------------------

@st.composite
def byte_mutation(draw, data: bytes, others: list[bytes]) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "splice", "random", "insert", "zero-run"]))
    size = len(data)
    if kind == "truncate":
        return data[:draw(st.integers(0, size))]
    if kind == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 3))):
            out[draw(st.integers(0, size - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(out)
    if kind == "splice":
        other = draw(st.sampled_from(others))
        start, length = draw(st.integers(0, size)), draw(st.integers(1, 512))
        source_start = draw(st.integers(0, max(0, len(other) - 1)))
        return data[:start] + other[source_start:source_start + length] + data[start + length:]
    if kind == "random":
        return draw(st.binary(min_size=0, max_size=4096))
    if kind == "insert":
        at = draw(st.integers(0, size))
        return data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]
    start = draw(st.integers(0, size))
    return data[:start] + bytes(draw(st.integers(1, 256))) + data[start + 256:]


def reseal(body: bytes) -> bytes:
    """A segment file around a raw body, with a valid checksum: what a buggy writer could leave."""
    packed = zstandard.ZstdCompressor(level=1).compress(body)
    count = _count_records(body)
    return MAGIC + packed + TRAILER.pack(len(packed), xxhash.xxh3_64_intdigest(packed), count, END)


def _count_records(body: bytes) -> int:
    try:
        return len(decode_body(body, Path("x")).records())
    except BadInput:
        return 1


def raw_body(path: Path) -> bytes:
    data = path.read_bytes()
    body = data[len(MAGIC):len(data) - TRAILER.size]
    return zstandard.ZstdDecompressor().decompress(body)


# --- segments ------------------------------------------------------------------------------------------------

@FUZZ
@given(data=st.data())
def test_corrupt_segments_never_go_green(world, data):
    run_dir = work_copy(world, "dumped")
    segments = sorted((run_dir / "segments").glob("*.seg"))
    victim = data.draw(st.sampled_from(segments), label="segment")
    original = victim.read_bytes()
    how = data.draw(st.sampled_from(["bytes", "bytes", "bytes", "duplicate", "reseal"]), label="how")
    if how == "bytes":
        mutated = data.draw(byte_mutation(original, [s.read_bytes() for s in segments]), label="mutation")
        victim.write_bytes(mutated)
        benign = mutated == original
    elif how == "duplicate":  # the same segment once more under a later name: replaying it again is harmless
        (run_dir / "segments" / "m000-00009999.seg").write_bytes(original)
        benign = True
    else:
        body = raw_body(victim)
        mutated = data.draw(byte_mutation(body, [body]), label="body mutation")
        victim.write_bytes(reseal(mutated))
        benign = mutated == body
    world["target"].flush()
    outcome = invoke("replay", "--target", world["target"].url(), "--run-dir", run_dir)
    check(outcome, world, benign, exact_required=how != "reseal" or benign)
    if how == "bytes" and not benign:
        assert outcome.exit_code == 2 and victim.name in outcome.stderr, str(outcome)
    shutil.rmtree(run_dir.parent, ignore_errors=True)


# --- ledgers -------------------------------------------------------------------------------------------------

def _reindent(text: str) -> str:
    return json.dumps(json.loads(text), indent=4)  # same content, other bytes: benign


@st.composite
def type_change(draw, ledger: dict) -> dict:
    """A hand edit that keeps valid JSON but changes a value's type (no checksum: a legacy ledger)."""
    ledger = json.loads(json.dumps(ledger))
    ledger.pop(CHECKSUM_FIELD, None)
    paths = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                paths.append(path + [key])
                walk(value, path + [key])
        elif isinstance(node, list):
            for index, value in enumerate(node[:3]):
                paths.append(path + [index])
                walk(value, path + [index])
    walk(ledger, [])
    path = draw(st.sampled_from(paths))
    parent = ledger
    for step in path[:-1]:
        parent = parent[step]
    replacement = draw(st.sampled_from(["delete", None, "text", 7, -3, 2.5, [], {}, True]))
    if replacement == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    return ledger


@FUZZ
@given(data=st.data())
def test_corrupt_ledgers_never_go_green(world, data):
    base = data.draw(st.sampled_from(["dumped", "half", "done"]), label="base")
    run_dir = work_copy(world, base)
    names = sorted(p.name for p in run_dir.glob("*.json"))
    victim = run_dir / data.draw(st.sampled_from(names), label="ledger")
    original = victim.read_bytes()
    how = data.draw(st.sampled_from(["bytes", "bytes", "reindent", "type"]), label="how")
    if how == "bytes":
        mutated = data.draw(byte_mutation(original, [original]), label="mutation")
        benign = mutated == original
        victim.write_bytes(mutated)
    elif how == "reindent":
        victim.write_text(_reindent(original.decode()))
        benign = True
    else:
        victim.write_text(json.dumps(data.draw(type_change(json.loads(original)), label="edit")))
        benign = False
    target = world["target"]
    target.flush()
    if base == "done":  # the target holds what the finished run wrote
        refill = invoke("run", "--source", world["source"].url(), "--target", target.url(), "--run-dir",
                        work_copy(world, "done"), *world["common"], "--redo", "replay")
        assert refill.exit_code == 0, refill
    if base == "done":
        outcome = invoke("run", "--source", world["source"].url(), "--target", target.url(), "--run-dir", run_dir,
                         *world["common"], "--allow-nonempty-target")
    else:  # finish the dump, then replay it
        outcome = invoke("dump", "--source", world["source"].url(), "--run-dir", run_dir, *world["common"])
        if outcome.exit_code == 0:
            outcome = invoke("replay", "--target", target.url(), "--run-dir", run_dir)
    if how == "type":  # a hand edit: the ledger lost its checksum, so it is refused, naming the file
        assert outcome.exit_code == 2 and victim.name in outcome.stderr, str(outcome)
    check(outcome, world, benign)
    shutil.rmtree(run_dir.parent, ignore_errors=True)


# --- the codec alone, many more examples ---------------------------------------------------------------------

member = st.binary(max_size=40)
pairs = st.lists(st.tuples(member, member), max_size=6).map(lambda ps: [x for p in ps for x in p])
entries = st.lists(st.tuples(member, st.lists(st.tuples(member, member), max_size=3)), max_size=4).map(
    lambda es: [x for entry_id, fields in es for x in (entry_id, b"%d" % len(fields), *[y for f in fields for y in f])])
ITEMS = {"string": st.tuples(member).map(list), "hash": pairs, "zset": pairs, "list": st.lists(member, max_size=12),
         "set": st.lists(member, max_size=12), "stream": entries,
         "stream-group": st.tuples(member, pairs).map(lambda t: [t[0], *t[1]]),
         "stream-groups": st.lists(st.tuples(member, member, st.lists(member, max_size=3)), max_size=3).map(
             lambda gs: [b"1-1", b"", b"", *(x for name, last, consumers in gs
                                              for x in (name, last, b"", b"%d" % len(consumers), *consumers))]),
         "stream-pel": st.lists(st.tuples(member, member), max_size=3).map(
             lambda es: [b"group", *(x for entry_id, consumer in es for x in (entry_id, consumer, b"1", b"2"))]),
         "stream-end": st.lists(member, max_size=3).map(lambda ids: [b"1-1", b"3", b"0-0", *ids]),
         "hash-ttl": st.lists(st.tuples(member, member), max_size=4).map(
             lambda ps: [x for f, v in ps for x in (f, v, b"-1")])}


@st.composite
def struct_record(draw) -> Record:
    kind = draw(st.sampled_from(CHUNK_TYPES))
    return Record(draw(st.binary(max_size=64)), draw(st.integers(-1, 2**62)), kind=STRUCT, type=kind,
                  offset=draw(st.integers(0, 2**40)), first=draw(st.booleans()), items=draw(ITEMS[kind]))


records = st.one_of(
    st.builds(lambda k, e, p: Record(k, e, p), st.binary(max_size=64), st.integers(-1, 2**62),
              st.binary(min_size=10, max_size=200)),
    struct_record(),
)


@pytest.mark.parametrize("kind, items", [
    ("string", []), ("string", [b"a", b"b"]), ("hash", [b"field"]), ("zset", [b"m", b"1", b"n"]),
    ("stream", [b"1-1"]), ("stream", [b"1-1", b"x"]), ("stream", [b"1-1", b"2", b"f", b"v"]),
    ("stream-group", []), ("stream-group", [b"0-1", b"group"]),
    ("stream-groups", [b"1-1"]), ("stream-groups", [b"1-1", b"", b"", b"g", b"0-0", b"", b"2", b"c"]),
    ("stream-pel", [b"g", b"1-1", b"c", b"x", b"1"]), ("stream-end", [b"1-1"]), ("hash-ttl", [b"f", b"v"]),
])
def test_malformed_struct_chunks_are_a_corrupt_segment(world, tmp_path, kind, items):
    """A chunk its writer could not turn into commands (say from a buggy dump) is refused as corrupt, with
    the file named, before anything of the segment is written: never an unexpected crash mid-replay."""
    run_dir = work_copy(world, "dumped")
    writer = SegmentWriter()
    writer.add(Record(b"fine", -1, kind=STRUCT, type="set", items=[b"a"]))
    writer.add(Record(b"bad", -1, kind=STRUCT, type=kind, items=items))
    bad = run_dir / "segments" / "m000-00000000.seg"
    bad.write_bytes(writer.finish())
    world["target"].flush()
    outcome = invoke("replay", "--target", world["target"].url(), "--run-dir", run_dir)
    check(outcome, world, benign=False)
    assert outcome.exit_code == 2 and bad.name in outcome.stderr, str(outcome)
    assert world["target"].first.client().dbsize() == 0
    shutil.rmtree(run_dir.parent, ignore_errors=True)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.lists(records, max_size=30))
def test_segment_codec_round_trips(tmp_path_factory, batch):
    writer = SegmentWriter()
    for record in batch:
        writer.add(record)
    path = tmp_path_factory.mktemp("codec") / "m000-00000000.seg"
    path.write_bytes(writer.finish())
    # Replay order: the DUMP records as read, then the struct records as read.
    assert read_segment(path) == [r for r in batch if r.kind == DUMP] + [r for r in batch if r.kind == STRUCT]


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.binary(max_size=2048))
def test_decoder_never_crashes_on_any_body(body):
    try:
        decoded = decode_body(body, Path("m000-00000000.seg")).records()
    except BadInput as exc:
        assert "corrupt" in exc.message
        return
    assert all(isinstance(r, Record) and r.kind in (DUMP, STRUCT) for r in decoded)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_reader_refuses_every_changed_byte(tmp_path_factory, data):
    writer = SegmentWriter()
    for index in range(20):
        writer.add(Record(b"key:%d" % index, -1, kind=STRUCT, type="list", items=[b"a", b"b"]))
    original = writer.finish()
    mutated = data.draw(byte_mutation(original, [original]))
    path = tmp_path_factory.mktemp("reader") / "m000-00000000.seg"
    path.write_bytes(mutated)
    try:
        read_segment(path)
    except BadInput as exc:
        assert path.name in exc.message
        return
    assert mutated == original


def test_reseal_helper_makes_a_readable_segment(tmp_path):
    """The fuzz's 'reseal' is only meaningful if an unchanged body reseals into a segment that reads back."""
    writer = SegmentWriter()
    writer.add(Record(b"k", -1, b"x" * 20))
    path = tmp_path / "m000-00000000.seg"
    path.write_bytes(writer.finish())
    body = raw_body(path)
    path.write_bytes(reseal(body))
    assert [r.key for r in read_segment(path)] == [b"k"]
    assert struct.calcsize("<QQQ8s") == TRAILER.size
