"""Fast unit tests of the pure logic: no servers, no mocks, seconds for the whole file.

The end-to-end tests prove the same behaviour on real servers; these pin the rules themselves
(what counts as which difference, which keys witness a segment, how long a retry waits) so that a
change to one shows at once, and by name.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from migrate.backoff import Backoff
from migrate.cloud.cutover import format_duration, parse_duration
from migrate.datapath import witness
from migrate.datapath.reader import _rounds
from migrate.datapath.segments import CHUNK_TYPES, STRUCT, Record, SegmentWriter, decode_body
from migrate.errors import BadInput
from migrate.net.keyspace import GONE, NO_EXPIRY, SLOT_COUNT, absolute_expiry, estimated_size, key_slot, key_slots
from migrate.net.rdb import FOOTER_BYTES, is_module_value, payload_body, payload_type, rdb_version_of
from migrate.verify.compare import EXPIRED, classify
from migrate.verify.digest import DIGEST_TYPES
from migrate.verify.readers import ABSENT, View
from migrate.verify.stage import Settled, finish_settling, settle_round
from reliability import assert_clean_error, invoke

NOW = 1_700_000_000_000
TOLERANCE = 2000


def view(type_name: str = "string", digest: int = 1, expire_at: int = NO_EXPIRY, length: int = 1) -> View:
    return View(type_name, digest, expire_at, length)


def payload(object_type: int, rdb_version: int, body: bytes = b"value") -> bytes:
    """A DUMP payload's shape: object type, encoded value, RDB version (2 bytes LE), CRC64 (8 bytes)."""
    return bytes([object_type]) + body + rdb_version.to_bytes(2, "little") + b"\x11" * 8


# --- compare.classify ------------------------------------------------------------------------------------

@pytest.mark.parametrize("ref,tgt,kind", [
    (ABSENT, ABSENT, None),
    (view(), view(), None),
    (view(), ABSENT, "missing"),
    (ABSENT, view(), "extra"),
    (view("string"), view("list"), "type"),
    (view(digest=1), view(digest=2), "value"),
    (view(expire_at=NOW + 60_000), view(), "ttl"),                              # a TTL on one side only
    (view(), view(expire_at=NOW + 60_000), "ttl"),
    (view(expire_at=NOW + 60_000), view(expire_at=NOW + 60_000 + TOLERANCE), None),  # within the tolerance
    (view(expire_at=NOW + 60_000), view(expire_at=NOW + 60_001 + TOLERANCE), "ttl"),
    (view(expire_at=NOW + 1000), ABSENT, EXPIRED),                                 # due: the target dropped it
    (ABSENT, view(expire_at=NOW - 5), EXPIRED),
    (view(expire_at=NOW + TOLERANCE + 1), ABSENT, "missing"),                     # not due yet: really missing
], ids=["both-absent", "equal", "missing", "extra", "type", "value", "ttl-only-source", "ttl-only-target",
        "ttl-within-tolerance", "ttl-beyond-tolerance", "missing-but-due", "extra-but-expired", "missing-not-due"])
def test_classify(ref, tgt, kind):
    assert classify(ref, tgt, NOW, TOLERANCE) == kind


def test_classify_checks_type_before_value_and_value_before_ttl():
    assert classify(view("hash", 1, NOW + 10**6), view("set", 2, NO_EXPIRY), NOW, TOLERANCE) == "type"
    assert classify(view("hash", 1, NOW + 10**6), view("hash", 2, NO_EXPIRY), NOW, TOLERANCE) == "value"


# --- verify settling: one round's judgement and the final list ------------------------------------------

def test_settle_round_sorts_every_kind_of_reread():
    pending = {
        b"same-diff": (view(digest=1), view(digest=2)),
        b"moved": (view(digest=1), view(digest=2)),
        b"now-equal": (view(digest=1), view(digest=2)),
        b"gone-had-ttl": (view(expire_at=NOW + 60_000), ABSENT),
        b"gone-no-ttl": (view(), ABSENT),
        b"due": (view(expire_at=NOW + 60_000), ABSENT),
    }
    ref = {b"same-diff": view(digest=1), b"moved": view(digest=3), b"now-equal": view(digest=2),
           b"gone-had-ttl": ABSENT, b"gone-no-ttl": ABSENT, b"due": view(expire_at=NOW + 100)}
    tgt = {b"same-diff": view(digest=2), b"moved": view(digest=2), b"now-equal": view(digest=2),
           b"gone-had-ttl": ABSENT, b"gone-no-ttl": ABSENT, b"due": ABSENT}
    settled = Settled([])
    moving = settle_round(pending, ref, tgt, NOW, TOLERANCE, settled)
    assert moving == {b"moved": (view(digest=3), view(digest=2))}
    assert [(d.key, d.kind) for d in settled.differences] == [(b"same-diff", "value")]
    assert (settled.expired, settled.vanished) == (2, 1)  # gone-had-ttl and due; gone-no-ttl vanished


def test_a_ttl_within_the_tolerance_is_not_a_move():
    pending = {b"k": (view(expire_at=NOW + 60_000), ABSENT)}
    settled = Settled([])
    moving = settle_round(pending, {b"k": view(expire_at=NOW + 60_000 + TOLERANCE)}, {b"k": ABSENT}, NOW,
                          TOLERANCE, settled)
    assert moving == {} and [(d.key, d.kind) for d in settled.differences] == [(b"k", "missing")]


def test_finish_settling_lists_keys_still_moving_as_changing_by_kind_then_key():
    settled = Settled([])
    settle_round({b"b": (view(digest=1), ABSENT), b"a": (view(digest=1), view(digest=2))},
                 {b"b": view(digest=1), b"a": view(digest=1)}, {b"b": ABSENT, b"a": view(digest=2)},
                 NOW, TOLERANCE, settled)
    result = finish_settling(settled, {b"c": (view(digest=5), view(digest=6))})
    assert [(d.key, d.kind) for d in result.differences] == [(b"b", "missing"), (b"a", "value"), (b"c", "changing")]


# --- witnesses --------------------------------------------------------------------------------------------

def _segment(dumps: list[tuple[bytes, int]], structs: list[tuple[bytes, int]] = ()):
    writer = SegmentWriter()
    writer.add_dumps([k for k, _ in dumps], [e for _, e in dumps], [payload(0, 10) for _ in dumps])
    for key, expire_at in structs:
        writer.add(Record(key, expire_at, kind=STRUCT, type="string", items=[b"v"]))
    return decode_body(writer.body(), Path("unit.seg"))


def _halves() -> list[int]:
    """Two target nodes: slots 0-8191 and 8192-16383."""
    return [0] * (SLOT_COUNT // 2) + [1] * (SLOT_COUNT // 2)


def _keys_on(node: int, count: int, prefix: bytes = b"key:") -> list[bytes]:
    owners = _halves()
    keys = (prefix + b"%d" % i for i in range(10_000))
    return [key for key in keys if owners[key_slot(key)] == node][:count]


def test_choose_takes_the_last_key_written_to_each_node():
    (a1, a2), (b1, b2) = _keys_on(0, 2), _keys_on(1, 2)
    segment = _segment([(a1, NO_EXPIRY), (b1, NO_EXPIRY), (a2, NO_EXPIRY), (b2, NO_EXPIRY)])
    chosen = witness.choose(segment, _halves(), NOW)
    assert sorted(chosen) == sorted([[a2.hex(), NO_EXPIRY], [b2.hex(), NO_EXPIRY]])


def test_choose_prefers_struct_records_and_skips_keys_that_expire_soon_or_are_long():
    (a1, a2), (s1,) = _keys_on(0, 2), _keys_on(0, 1, prefix=b"struct:")
    long_key = _keys_on(0, 1, prefix=b"x" * (witness.MAX_KEY + 1))[0]
    soon = NOW + witness.EXPIRY_MARGIN_MS - 1
    later = NOW + witness.EXPIRY_MARGIN_MS
    segment = _segment([(a1, later), (a2, soon), (long_key, NO_EXPIRY)], structs=[(s1, NO_EXPIRY)])
    assert witness.choose(segment, _halves(), NOW) == [[s1.hex(), NO_EXPIRY]]  # written after the DUMPs
    without_struct = _segment([(a1, later), (a2, soon), (long_key, NO_EXPIRY)])
    assert witness.choose(without_struct, _halves(), NOW) == [[a1.hex(), later]]


def test_missing_names_the_witnesses_the_target_lost_except_those_due_to_expire():
    witnesses = [[b"kept".hex(), NO_EXPIRY], [b"lost".hex(), NOW + 60_000], [b"expiring".hex(), NOW + 1000]]
    asked = []

    def exists(keys):
        asked.extend(keys)
        return [key == b"kept" for key in keys]

    assert witness.missing(witnesses, exists, NOW) == [b"lost"]
    assert asked == [b"kept", b"lost"]  # a key about to expire is not even asked about
    assert witness.missing([], exists, NOW) == []


# --- durations (cutover's --max-verify-age) ----------------------------------------------------------------

@pytest.mark.parametrize("text,seconds", [("90", 90), ("2.5", 2.5), ("90s", 90), ("30m", 1800), ("2h", 7200),
                                          ("1h30m", 5400), ("1d", 86400), (" 10M ", 600)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "10x", "h", "-5m", "1h 30m"])
def test_parse_duration_refuses_with_a_hint(text):
    with pytest.raises(BadInput) as refused:
        parse_duration(text)
    assert "not understood" in refused.value.message and "30m" in refused.value.hint


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (119, "119s"), (120, "2m"), (7199, "119m"), (7200, "2h00m"),
                                          (5400 + 7200, "3h30m")])
def test_format_duration_reads_back(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text) == (seconds - seconds % 60 if seconds >= 120 else seconds)


# --- the shared mechanisms ---------------------------------------------------------------------------------

def test_backoff_doubles_from_50_ms_to_at_most_5_s():
    backoff = Backoff(60)
    assert [backoff.next_delay() for _ in range(10)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert not backoff.expired()
    assert Backoff(-1).expired()


def test_rdb_payload_facts():
    dumped = payload(4, 11, b"hash-body")
    assert FOOTER_BYTES == 10
    assert rdb_version_of(dumped) == 11 and rdb_version_of(payload(0, 0x0109)) == 0x0109
    assert payload_body(dumped) == bytes([4]) + b"hash-body"
    assert payload_body(dumped) == payload_body(payload(4, 9, b"hash-body"))  # another server, same value
    assert [payload_type(payload(t, 10)) for t in (0, 18, 20, 17, 25, 21, 6, 99)] == [
        "string", "list", "set", "zset", "hash", "stream", "other", "other"]
    assert payload_type(b"") == "other"
    assert is_module_value(payload(6, 10)) and is_module_value(payload(7, 10)) and not is_module_value(payload(0, 10))
    with pytest.raises(ValueError):
        rdb_version_of(b"\x00" * (FOOTER_BYTES - 1))


@pytest.mark.parametrize("reply,now,expected", [
    (-1, None, NO_EXPIRY), (-2, None, GONE), (NOW + 5, None, NOW + 5),   # PEXPIRETIME: absolute already
    (-1, NOW, NO_EXPIRY), (-2, NOW, GONE), (5000, NOW, NOW + 5000),       # PTTL: plus the server's time
])
def test_absolute_expiry(reply, now, expected):
    assert absolute_expiry(reply, now) == expected


def test_one_size_estimate_where_memory_usage_is_refused():
    assert estimated_size(b"s", "string", 1000) == 1 + 50 + 1000
    assert estimated_size(b"l", "list", 100) == 1 + 50 + 100 * 64   # the plan's test expects the same figure


def test_key_slots_agree_with_key_slot_with_and_without_hash_tags():
    plain = [b"foo", b"bar", b"user:1000", b""]
    tagged = [b"{user1000}.following", b"{user1000}.followers", b"foo{}{bar}", b"{}foo"]
    assert key_slot(b"foo") == 12182 and key_slot(b"123456789") == 12739
    assert key_slot(b"{user1000}.following") == key_slot(b"{user1000}.followers") == key_slot(b"user1000")
    assert key_slots(plain) == list(map(key_slot, plain))
    assert key_slots(plain + tagged) == list(map(key_slot, plain + tagged))


def test_dump_rounds_stay_within_the_budget_and_a_big_key_goes_alone():
    sizes = [(b"a", 40), (b"b", 40), (b"c", 40), (b"big", 500), (b"d", 10)]
    assert list(_rounds(sizes, 100)) == [[b"a", b"b"], [b"c"], [b"big"], [b"d"]]
    assert list(_rounds([], 100)) == []


def test_straggler_transactions_are_bounded_by_keys_and_bytes():
    """The straggler round's compare-and-set queues a batch's writes in one transaction, held in the old Redis's
    memory until EXEC: at most CAS_BATCH keys and CAS_BATCH_BYTES of writes, a bigger write alone, none lost."""
    from migrate.cloud.copyback import CAS_BATCH, CAS_BATCH_BYTES, _batches
    small = [(b"s%d" % i, None, [b"x" * 10]) for i in range(CAS_BATCH + 5)]
    assert [len(batch) for batch in _batches(small)] == [CAS_BATCH, 5]
    third = CAS_BATCH_BYTES // 3
    mixed = [(b"a", None, [b"x" * third]), (b"b", None, [b"x" * third]), (b"huge", None, [b"x" * CAS_BATCH_BYTES]),
             (b"c", None, [b"x" * third]), (b"d", None, [])]
    assert [[key for key, _, _ in batch] for batch in _batches(mixed)] == [[b"a", b"b"], [b"huge"], [b"c", b"d"]]
    assert list(_batches([])) == []


def test_type_codes_are_the_ones_on_disk_and_in_digests():
    """Segment files store a struct record's type by its position; digests are seeded with theirs.
    Reordering either breaks existing run dirs or changes every digest: these lists only grow."""
    assert CHUNK_TYPES[:7] == ("string", "hash", "list", "set", "zset", "stream", "stream-group")
    assert DIGEST_TYPES[:8] == ("none", "string", "list", "set", "zset", "hash", "stream", "other")


# --- command line choices ----------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["replay", "run"])
def test_mode_restore_is_no_longer_a_choice(command, tmp_path):
    """`--mode restore` did exactly what `auto` does; it is refused before anything connects."""
    args = ["--target", "redis://127.0.0.1:1", "--run-dir", tmp_path / "run", "--mode", "restore"]
    if command == "run":
        args = ["--source", "redis://127.0.0.1:1", *args]
    assert_clean_error(invoke(command, *args), 2, "--mode", "'restore' is not one of")
