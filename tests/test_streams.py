"""Streams carried whole by the type-by-type path: entries with their IDs, the last generated ID, entries-added
and max-deleted ID, every group with its last-delivered ID and entries-read, every consumer, and every pending
entry with its consumer, delivery count and idle time, including pending entries whose entry was deleted.

Each copy is checked under the independent snapshot (tests/snapshot.py: entries, groups, consumers, pending
entries) and against the stream's own counters read here with redis-py, never with the tool's readers.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
import redis

from migrate.datapath.segments import MAGIC, STRUCT, Record, load_segment, seal
from reliability import invoke
from snapshot import assert_same, snapshot

IDLE_TOLERANCE_MS = 5000


def queue(client: redis.Redis, name: bytes, entries: int, *, read: int = 6, redeliver: int = 2,
          delete_pending: tuple[int, ...] = (1, 3), ack: tuple[int, ...] = (2,)) -> None:
    """A stream as a work queue leaves it: explicit IDs (Redis 6.2 has no `ms-*`), a group whose workers hold
    pending entries (some delivered more than once, some acked, some deleted while pending, the newest among
    them), a consumer with nothing pending, and a group that has read nothing."""
    pipe = client.pipeline(transaction=False)
    for n in range(1, entries + 1):
        pipe.xadd(name, {"order": n, "state": "new"}, id=f"{1000 + n}-{n % 3}")
    pipe.execute()
    ids = [entry_id for entry_id, _ in client.xrange(name)]
    client.xgroup_create(name, "fulfillment", "0")
    client.xgroup_create(name, "audit", "$")
    client.xreadgroup("fulfillment", "worker-1", {name: ">"}, count=read // 2)
    client.xreadgroup("fulfillment", "worker-2", {name: ">"}, count=read - read // 2)
    for _ in range(redeliver):
        client.xreadgroup("fulfillment", "worker-1", {name: "0"}, count=2)
    client.xgroup_createconsumer(name, "fulfillment", "idle-worker")
    for index in ack:
        client.xack(name, "fulfillment", ids[index])
    doomed = [ids[index] for index in delete_pending] + [ids[read - 1]]
    client.xdel(name, *doomed)


def streams(client: redis.Redis) -> list[bytes]:
    names = [b"queue:small", b"queue:big", b"queue:emptied", b"queue:no-groups"]
    queue(client, names[0], 12)
    queue(client, names[1], 2600, read=1500, redeliver=1, delete_pending=(5, 999, 1000, 1001, 1499))
    client.xadd(names[2], {"a": 1}, id="5-1")
    client.xgroup_create(names[2], "g", "0")
    client.xreadgroup("g", "c", {names[2]: ">"})
    client.xdel(names[2], "5-1")  # no entries left, one pending entry whose entry is gone
    pipe = client.pipeline(transaction=False)
    for n in range(1, 20):
        pipe.xadd(names[3], {"n": n}, id=f"{n}-1")
    pipe.xdel(names[3], "19-1", "4-1")
    pipe.execute()
    return names


def state(client: redis.Redis, key: bytes) -> dict:
    """The counters and per-group state of a stream, as redis-py reads them (fields a server lacks: absent)."""
    info = client.xinfo_stream(key)
    result = {field: info[field] for field in ("length", "last-generated-id", "entries-added", "max-deleted-entry-id")
              if field in info}
    for group in client.xinfo_groups(key):
        name = group["name"]
        result[name] = {field: group[field] for field in ("consumers", "pending", "last-delivered-id",
                                                          "entries-read", "lag") if field in group}
    return result


def shared(a: dict, b: dict) -> tuple[dict, dict]:
    keys = a.keys() & b.keys()
    pairs = {k: shared(a[k], b[k]) if isinstance(a[k], dict) else (a[k], b[k]) for k in keys}
    return {k: v[0] for k, v in pairs.items()}, {k: v[1] for k, v in pairs.items()}


def idle_times(client: redis.Redis, key: bytes) -> dict:
    now = {}
    for group in client.xinfo_groups(key):
        for entry in client.xpending_range(key, group["name"], "-", "+", 1_000_000):
            now[(group["name"], entry["message_id"])] = entry["time_since_delivered"]
    return now


def assert_streams_whole(source, target_client: redis.Redis, names: list[bytes], counters: bool = True) -> None:
    assert_same(snapshot(source), snapshot_of(target_client))
    source_client = source.client()
    for name in names:
        expected, got = state(source_client, name), state(target_client, name)
        if not counters:  # one side keeps no counters: compare what both report (always the IDs and the groups)
            expected, got = shared(expected, got)
            assert {"length", "last-generated-id"} <= expected.keys(), expected
        assert got == expected, name
        source_idle, target_idle = idle_times(source_client, name), idle_times(target_client, name)
        assert source_idle.keys() == target_idle.keys(), name
        for entry, idle in source_idle.items():
            assert abs(idle - target_idle[entry]) <= IDLE_TOLERANCE_MS, (name, entry, idle, target_idle[entry])


class _One:
    """A single client as snapshot() takes it."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def client(self) -> redis.Redis:
        return self._client


def snapshot_of(client: redis.Redis) -> dict:
    return snapshot(_One(client))


def run(source, target, run_dir: Path, *extra) -> dict:
    outcome = invoke("run", "--source", source.url(), "--target", target.url(), "--run-dir", run_dir, "--json", *extra)
    assert outcome.exit_code == 0, str(outcome)
    return json.loads(outcome.stdout)


def test_valkey_9_streams_reach_valkey_8_whole(valkey_source, valkey_target, run_dir):
    """RDB 80 payloads RESTORE nowhere older: the type-by-type path carries the streams whole, counters too."""
    names = streams(valkey_source.client())
    summary = run(valkey_source, valkey_target, run_dir)
    assert (summary["restored"], summary["struct_written"], summary["not_held"]) == (0, len(names), {}), summary
    assert_streams_whole(valkey_source, valkey_target.first.client(), names)
    assert summary["verify"]["equal"], summary
    against_dump = invoke("verify", "--against-dump", "--run-dir", run_dir, "--target", valkey_target.url(), "--json")
    assert against_dump.exit_code == 0, str(against_dump)  # the dump's records digest as the target reads


def test_redis_7_streams_in_struct_mode_and_a_replay_again_changes_nothing(standalone_source, serverless_target,
                                                                           run_dir):
    names = streams(standalone_source.client())
    summary = run(standalone_source, serverless_target, run_dir, "--mode", "struct")
    assert summary["struct_written"] == len(names), summary
    target = serverless_target.first.client()
    assert_streams_whole(standalone_source, target, names)
    again = invoke("run", "--source", standalone_source.url(), "--target", serverless_target.url(), "--run-dir",
                   run_dir, "--mode", "struct", "--redo", "replay", "--allow-nonempty-target", "--json")
    assert again.exit_code == 0, str(again)
    assert_streams_whole(standalone_source, target, names)


def test_redis_62_streams_in_struct_mode(old_source, valkey_target, run_dir):
    """Redis 6.2 keeps no entries-added or entries-read: XINFO STREAM FULL still gives groups, consumers and
    pending entries with their delivery times and counts."""
    names = streams(old_source.client())
    summary = run(old_source, valkey_target, run_dir, "--mode", "struct")
    assert (summary["struct_written"], summary["not_held"]) == (len(names), {}), summary
    assert_streams_whole(old_source, valkey_target.first.client(), names, counters=False)


def test_a_redis_62_target_is_named_for_the_counters_it_cannot_hold(standalone_source, old_target, run_dir):
    """Redis 7.0 payloads RESTORE nowhere older, so the streams go type by type into 6.2, which has no
    entries-read, entries-added or max-deleted ID: written without them, and each such key named."""
    names = streams(standalone_source.client())
    summary = run(standalone_source, old_target, run_dir)
    assert summary["struct_written"] == len(names), summary
    assert sum(summary["not_held"].values()) == len(names), summary
    assert sorted(item["key"] for item in summary["not_held_keys"]) == sorted(n.decode() for n in names), summary
    assert "entries-read" in next(iter(summary["not_held"]))
    assert_streams_whole(standalone_source, old_target.first.client(), names, counters=False)
    text = invoke("status", "--run-dir", run_dir)
    assert text.exit_code == 0, str(text)
    assert "not held: queue:small: stream entries-read" in text.stdout, str(text)


def test_verify_names_a_stream_whose_pending_entries_or_positions_differ(valkey_source, valkey_target, run_dir):
    names = streams(valkey_source.client())
    run(valkey_source, valkey_target, run_dir)
    target = valkey_target.first.client()
    pending = target.xpending_range(names[0], "fulfillment", "-", "+", 1)[0]
    target.xclaim(names[0], "fulfillment", "someone-else", 0, [pending["message_id"]], justid=True)
    target.execute_command("XGROUP", "SETID", names[1], "fulfillment", "$", "ENTRIESREAD", 7)
    outcome = invoke("verify", "--source", valkey_source.url(), "--target", valkey_target.url(), "--json")
    assert outcome.exit_code == 1, str(outcome)
    result = json.loads(outcome.stdout)
    assert sorted(base64.b64decode(d["key"]) for d in result["first_differences"]) == sorted(names[:2]), result
    against_dump = invoke("verify", "--against-dump", "--run-dir", run_dir, "--target", valkey_target.url(), "--json")
    assert against_dump.exit_code == 1, str(against_dump)  # the pending entry's consumer, the group's position
    result = json.loads(against_dump.stdout)
    assert sorted(base64.b64decode(d["key"]) for d in result["first_differences"]) == sorted(names[:2]), result


def test_segments_of_the_previous_format_are_still_read(tmp_path):
    """Version 2 wrote each item's length before the item; its segments replay as they did."""
    import struct as packing

    items = [b"1-1", b"1", b"f", b"v"]
    head = packing.pack("<BqIBQBI", STRUCT, -1, 1, 5, 0, 1, len(items))
    body = packing.pack("<II", 0, 1) + head + b"s" + b"".join(packing.pack("<I", len(i)) + i for i in items)
    data = seal(body, 1)
    old = data[:5] + b"\x02" + data[6:-8] + b"RMEND\x02\n\x00"
    path = tmp_path / "m000-00000000.seg"
    path.write_bytes(old)
    assert MAGIC[5:6] == b"\x03"
    assert load_segment(path).structs == [Record(b"s", -1, kind=STRUCT, type="stream", items=items)]
    path.write_bytes(data[:5] + b"\x09" + data[6:])
    with pytest.raises(Exception, match="another version of redis-migrate"):
        load_segment(path)


def test_idle_times_are_carried_as_delivery_times(valkey_source, valkey_target, run_dir):
    """An entry delivered long ago looks as idle on the target as on the source."""
    client = valkey_source.client()
    client.xadd(b"queue:old", {"a": 1}, id="1-1")
    client.xgroup_create(b"queue:old", "g", "0")
    client.xreadgroup("g", "c", {b"queue:old": ">"})
    an_hour_ago = int(time.time() * 1000) - 3_600_000
    client.xclaim(b"queue:old", "g", "c", 0, ["1-1"], idle=None, time=an_hour_ago, retrycount=4, force=True,
                  justid=True)
    run(valkey_source, valkey_target, run_dir)
    pending = valkey_target.first.client().xpending_range(b"queue:old", "g", "-", "+", 10)
    delivered_ago = int(time.time() * 1000) - an_hour_ago  # the hour, plus however long the copy took
    assert [(p["consumer"], p["times_delivered"]) for p in pending] == [(b"c", 4)]
    assert abs(pending[0]["time_since_delivered"] - delivered_ago) <= IDLE_TOLERANCE_MS


def test_every_type_from_redis_62_in_struct_mode(old_source, valkey_target, run_dir):
    """The struct batch script on a server without PEXPIRETIME (expiries from PTTL and the server's TIME),
    with the chunked reads for big values: every type exact, the streams whole."""
    from test_engines import matrix_specs, write

    written = write(old_source.client(), matrix_specs())
    names = streams(old_source.client())
    summary = run(old_source, valkey_target, run_dir, "--mode", "struct")
    assert (summary["struct_written"], summary["restored"]) == (written + len(names), 0), summary
    assert_streams_whole(old_source, valkey_target.first.client(), names, counters=False)
