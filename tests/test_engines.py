"""The engine matrix: Redis 6.2, Redis 7.0 and Valkey 9.1 sources into the Redis 7.0 and Valkey 8.1
serverless-like targets, each copy exact under the independent snapshot (tests/snapshot.py).

Which path a cell takes follows from the RDB versions: a payload RESTOREs where the target's RDB version is
at least the source's (6.2 = 9, 7.0 = 10, Valkey 8.1 = 11), and Valkey 9.1's payloads (RDB 80) RESTORE
nowhere here, so those cells are written type by type. Each cell's wall time (`run`, from the call to its
return, verify included) is printed at the end of the module, for the note.
"""

from __future__ import annotations

import json
import random
import time

import pytest
import redis

import seed_data
from migrate.cloud.plan import STANDARD_TYPES, type_paths
from migrate.net import engines
from migrate.net.endpoints import Endpoint, Topology, discover, probe_rdb_version
from reliability import assert_clean_error, invoke
from snapshot import assert_same, snapshot

SOURCES = {"redis-6.2": "old_source", "redis-7.0": "standalone_source", "valkey-9.1": "valkey_source"}
TARGETS = {"redis-7.0": "serverless_target", "valkey-8.1": "valkey_target"}
RDB = {"redis-6.2": 9, "redis-7.0": 10, "valkey-8.1": 11, "valkey-9.1": 80}
CELLS = [(source, target) for source in SOURCES for target in TARGETS]
MATRIX_KEYS = 400
MEMBERS = 2500  # more than a struct chunk (1,000), and past every listpack limit: hashtable/quicklist/skiplist


def path_of(source: str, target: str) -> str:
    return "restore" if RDB[target] >= RDB[source] else "struct"


def cell_id(cell: tuple[str, str]) -> str:
    return f"{cell[0]}->{cell[1]}"


@pytest.fixture(scope="module")
def wall_times(request):
    """Each cell's wall time, printed once the module is done (past pytest's capture)."""
    times: dict[str, float] = {}
    yield times
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter and capture and times:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            for name, seconds in times.items():
                reporter.write_line(f"engine matrix: {name:<44} {seconds:6.2f} s")


# --- data ----------------------------------------------------------------------------------------------

def _without_pending(commands):
    """A stream's commands with its consumer group left empty (no XREADGROUP, so no pending entries), and
    explicit entry IDs for `ms-*` ones, which Redis 6.2 does not accept."""
    for command in commands:
        if command[0] == "XREADGROUP":
            continue
        if command[0] == "XADD" and str(command[2]).endswith("-*"):
            command = (*command[:2], command[2][:-1] + "7", *command[3:])
        yield command


def matrix_specs(seed: int = 21):
    """seed_data's storefront keys and edge cases (every type, TTLs, binary names), streams without pending
    entries, plus collections big enough to be chunked and to leave their compact encodings."""
    rng = random.Random(seed)
    for spec in seed_data.key_specs(MATRIX_KEYS, seed, big_keys=False, short_ttl_keys=0):
        commands = list(spec.commands)
        yield spec.name, list(_without_pending(commands)) if spec.kind == "stream" else commands, spec.ttl_ms
    members = [b"m:%d:%s" % (n, rng.randbytes(6).hex().encode()) for n in range(MEMBERS)]
    yield b"matrix:big:hash", [("HSET", b"matrix:big:hash", *(x for m in members for x in (m, m[::-1])))], 7_200_001
    yield b"matrix:big:set", [("SADD", b"matrix:big:set", *members)], None
    yield b"matrix:big:zset", [("ZADD", b"matrix:big:zset", *(x for n, m in enumerate(members)
                                                            for x in (repr(n / 7), m)))], None
    yield b"matrix:big:list", [("RPUSH", b"matrix:big:list", *members)], 3_600_003
    yield b"matrix:big:string", [("SET", b"matrix:big:string", rng.randbytes(300_000))], None
    yield b"matrix:stream:trimmed", [("XADD", b"matrix:stream:trimmed", f"{n + 1}-1", "n", n) for n in range(50)] + [
        ("XDEL", b"matrix:stream:trimmed", "3-1", "50-1"), ("XGROUP", "CREATE", b"matrix:stream:trimmed", "g", "10-1")
    ], None


def write(client: redis.Redis, specs) -> int:
    pipe = client.pipeline(transaction=False)
    count = 0
    for name, commands, ttl_ms in specs:
        for command in commands:
            pipe.execute_command(*command)
        if ttl_ms:
            pipe.execute_command("PEXPIRE", name, ttl_ms)
        count += 1
    pipe.execute()
    return count


def run_cell(source, target, run_dir, wall_times: dict, name: str) -> dict:
    started = time.monotonic()
    outcome = invoke("run", "--source", source.url(), "--target", target.url(), "--run-dir", run_dir, "--json")
    wall_times[name] = time.monotonic() - started
    assert outcome.exit_code == 0, str(outcome)
    return json.loads(outcome.stdout)


# --- the matrix -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", CELLS, ids=cell_id)
def test_every_type_is_exact_across_engines(cell, request, run_dir, wall_times):
    source_name, target_name = cell
    source = request.getfixturevalue(SOURCES[source_name])
    target = request.getfixturevalue(TARGETS[target_name])
    written = write(source.client(), matrix_specs())
    summary = run_cell(source, target, run_dir, wall_times, cell_id(cell))
    assert summary["skipped"] == {}, summary
    if path_of(source_name, target_name) == "restore":
        assert (summary["restored"], summary["struct_written"]) == (written, 0), summary
    else:
        assert (summary["restored"], summary["struct_written"]) == (0, written), summary
    expected = snapshot(source)
    assert len(expected) == written
    assert {kind for kind, _, _ in expected.values()} == {"string", "hash", "list", "set", "zset", "stream"}
    assert_same(expected, snapshot(target))


# --- streams with consumer groups and pending entries ------------------------------------------------------

def stream_specs(seed: int = 5):
    """Streams as a queue leaves them: groups with consumers, pending entries delivered more than once, acked
    and deleted entries, and a group that has read nothing."""
    rng = random.Random(seed)
    for index in range(6):
        name = b"matrix:queue:%d" % index
        commands = list(_without_pending(seed_data._stream_commands(rng, name, 12 + index, [])))
        commands += [("XGROUP", "CREATE", name, "audit", "$"),
                     ("XREADGROUP", "GROUP", "fulfillment", "worker-1", "COUNT", 4, "STREAMS", name, ">"),
                     ("XREADGROUP", "GROUP", "fulfillment", "worker-2", "COUNT", 3, "STREAMS", name, ">"),
                     ("XREADGROUP", "GROUP", "fulfillment", "worker-1", "COUNT", 2, "STREAMS", name, "0"),
                     ("XGROUP", "CREATECONSUMER", name, "fulfillment", "idle-worker")]
        yield name, commands, None


def stream_state(client: redis.Redis, key: bytes) -> dict:
    """What a queue's users depend on, besides its entries: the stream's last ID, each group's position and
    pending count, each consumer's pending count, and every pending entry's consumer and delivery count.
    Idle times are left out (they run on), and so are the fields only one side's engine reports."""
    info = client.xinfo_stream(key)
    state = {"length": info["length"], "last-generated-id": info["last-generated-id"]}
    for name in ("entries-added", "max-deleted-entry-id"):
        if name in info:
            state[name] = info[name]
    for group in client.xinfo_groups(key):
        name = group["name"]
        state[b"group:" + name] = {field: group[field] for field in ("consumers", "pending", "last-delivered-id",
                                                                     "entries-read") if field in group}
        state[b"consumers:" + name] = sorted((c["name"], c["pending"]) for c in client.xinfo_consumers(key, name))
        pending = client.xpending_range(key, name, "-", "+", 10_000)
        state[b"pending:" + name] = [(p["message_id"], p["consumer"], p["times_delivered"]) for p in pending]
    return state


def comparable(source: dict, target: dict) -> tuple[dict, dict]:
    """The two states restricted to what both engines report (Redis 6.2 has no entries-added, for one)."""
    def only_shared(a, b):
        if isinstance(a, dict) and isinstance(b, dict):
            shared = a.keys() & b.keys()
            return {k: only_shared(a[k], b[k])[0] for k in shared}, {k: only_shared(a[k], b[k])[1] for k in shared}
        return a, b
    return only_shared(source, target)


@pytest.mark.parametrize("cell", CELLS, ids=cell_id)
def test_streams_with_groups_and_pending_entries_across_engines(cell, request, run_dir, wall_times):
    source = request.getfixturevalue(SOURCES[cell[0]])
    target = request.getfixturevalue(TARGETS[cell[1]])
    names = [name for name, _, _ in stream_specs()]
    write(source.client(), stream_specs())
    run_cell(source, target, run_dir, wall_times, cell_id(cell) + " (streams with groups)")
    assert_same(snapshot(source), snapshot(target))
    for name in names:
        expected, got = comparable(stream_state(source.client(), name), stream_state(target.first.client(), name))
        assert got == expected, name


# --- hashes whose fields expire on their own (Valkey 9, Redis 7.4+) ------------------------------------------

@pytest.mark.parametrize("target_name", list(TARGETS))
def test_hash_field_ttls_are_skipped_by_name_where_the_target_cannot_hold_them(target_name, valkey_source, request,
                                                                            run_dir):
    """Neither Redis 7.0 nor Valkey 8.1 has field TTLs: the key is skipped, named and counted, never copied
    without its fields' expiries; the plain hash next to it is copied."""
    target = request.getfixturevalue(TARGETS[target_name])
    client = valkey_source.client()
    client.hset(b"fields:plain", mapping={"a": "1", "b": "2"})
    client.hset(b"fields:expiring", mapping={"a": "1", "b": "2"})
    client.execute_command("HEXPIRE", b"fields:expiring", 3600, "FIELDS", 1, "a")
    outcome = invoke("run", "--source", valkey_source.url(), "--target", target.url(), "--run-dir", run_dir,
                     "--skip-unsupported", "--json")
    assert outcome.exit_code == 0, str(outcome)
    summary = json.loads(outcome.stdout)
    assert sum(summary["skipped"].values()) == 1, summary
    assert [item["key"] for item in summary["skipped_keys"]] == ["fields:expiring"], summary
    copied = snapshot(target)
    assert set(copied) == {b"fields:plain"}
    assert copied[b"fields:plain"][1] == [(b"a", b"1"), (b"b", b"2")]


# --- engine facts, and plan's account of each side ---------------------------------------------------------

@pytest.mark.parametrize("name", ["old_source", "standalone_source", "valkey_source", "valkey_target"])
def test_engine_and_rdb_version_are_what_the_live_server_says(name, request):
    """The engine table agrees with each live server: its INFO server, and the RDB version of a real DUMP."""
    bed = request.getfixturevalue(name)
    topology = discover(Endpoint.from_url("side", bed.url()))
    info = topology.client(topology.masters[0]).info("server")
    assert (topology.server, topology.version) == engines.engine_from_info(info)
    assert topology.engine == ("Valkey" if "valkey_version" in info else "Redis")
    assert topology.expected_rdb_version == probe_rdb_version(topology)


def plan_of(source, target, *extra) -> tuple[dict, str]:
    as_json = invoke("plan", "--source", source, "--target", target, *extra, "--json")
    text = invoke("plan", "--source", source, "--target", target, *extra)
    assert as_json.exit_code == text.exit_code, str(text)
    return json.loads(as_json.stdout), text.stdout


def test_plan_shows_engines_rdb_versions_and_the_type_by_type_path_from_valkey_9(valkey_source, valkey_target):
    client = valkey_source.client()
    write(client, list(matrix_specs())[:60])
    client.hset(b"fields:expiring", mapping={"a": "1", "b": "2"})
    client.execute_command("HEXPIRE", b"fields:expiring", 3600, "FIELDS", 1, "a")
    result, text = plan_of(valkey_source.url(), valkey_target.url())
    source, target = result["source"], result["target"]
    assert (source["engine"], source["version"][:4], source["rdb_version"]) == ("Valkey", "9.1.", 80)
    assert (target["engine"], target["version"][:4], target["rdb_version"]) == ("Valkey", "8.1.", 11)
    assert source["hash_field_ttl_keys"] == 1
    types = result["types"]
    assert {types[kind]["path"] for kind in STANDARD_TYPES} == {"type-by-type"}
    assert types["hash with field TTLs"]["path"] == "skipped" and "HEXPIRE" in types["hash with field TTLs"]["why"]
    assert f"standalone, Valkey {source['version']}, RDB 80" in text
    assert f"cluster, Valkey {target['version']}, RDB 11" in text
    assert "paths    string, list, set, zset, hash: type-by-type (the target (RDB 11) refuses RDB 80" in text
    assert "stream: type-by-type (the target (RDB 11) refuses RDB 80 payloads; whole: entries, last ID, groups, " \
           "consumers, pending entries, entries-added and entries-read)" in text
    assert "hash with field TTLs (1 key in the source): skipped (Valkey 8.1" in text


def test_plan_shows_the_restore_path_from_redis_62_into_valkey_8(old_source, valkey_target):
    write(old_source.client(), list(matrix_specs())[:60])
    result, text = plan_of(old_source.url(), valkey_target.url())
    assert result["verdict"] == "go", text
    assert (result["source"]["engine"], result["source"]["rdb_version"]) == ("Redis", 9)
    assert result["source"]["rdb_version_from"] == "dump"
    assert {kind: path["path"] for kind, path in result["types"].items()} == dict.fromkeys(STANDARD_TYPES, "restore")
    assert "paths    string, list, set, zset, hash, stream: restore (the target (RDB 11) RESTOREs RDB 9" in text


def test_plan_of_an_empty_source_takes_its_rdb_version_from_the_engine(valkey_source, serverless_target):
    result, _ = plan_of(valkey_source.url(), serverless_target.url())
    assert result["verdict"] == "blockers"  # nothing to migrate
    assert (result["source"]["rdb_version"], result["source"]["rdb_version_from"]) == (80, "engine version")
    assert result["types"]["string"]["path"] == "type-by-type"
    assert result["types"]["hash with field TTLs"]["keys"] == 0


def offline(engine: str, version: str) -> Topology:
    """A topology as discovery would describe a server of that engine and version (no connection is made)."""
    return Topology(Endpoint.from_url("side", "redis://127.0.0.1:1/0"), "standalone", engine, version, [])


def test_type_paths_skip_module_types_without_a_writer_and_carry_field_ttls_where_the_target_has_them():
    sample = {"sample": {"types": {"string": 5, "ReJSON-RL": 2}}, "hash_field_ttl_keys": 3}
    struct = type_paths(offline("redis", "8.0.2"), offline("redis", "7.4.1"), {**sample, "rdb_version": 12}, 11)
    assert struct["ReJSON-RL"]["path"] == "skipped" and "module" in struct["ReJSON-RL"]["why"]
    assert struct["hash with field TTLs"]["path"] == "type-by-type" and "HPEXPIREAT" in struct[
        "hash with field TTLs"]["why"]  # Redis 7.4 has HEXPIRE
    assert "entries-read" in struct["stream"]["why"]
    old = type_paths(offline("redis", "7.0.15"), offline("redis", "6.2.5"), {**sample, "rdb_version": 10}, 9)
    assert "cannot hold entries-added" in old["stream"]["why"]
    restore = type_paths(offline("redis", "8.0.2"), offline("redis", "8.0.2"), {**sample, "rdb_version": 12}, 12)
    assert restore["ReJSON-RL"]["path"] == "restore" and "same module" in restore["ReJSON-RL"]["why"]
    older = type_paths(offline("redis", "7.0.15"), offline("valkey", "8.1.1"), {**sample, "rdb_version": 10}, 11)
    assert "hash with field TTLs" not in older  # a Redis 7.0 source has none


# --- databases in cluster mode (Valkey 9) ------------------------------------------------------------------

def test_keys_outside_db0_of_a_valkey_cluster_are_refused_or_left_out_on_purpose(valkey_cluster_source,
                                                                               valkey_target, tmp_path):
    node = valkey_cluster_source.first
    write(node.client(), list(matrix_specs())[:40])
    node.client(db=3).set(b"elsewhere", b"v")
    url = valkey_cluster_source.url()
    result, text = plan_of(url, valkey_target.url())
    assert any("outside db0" in b["problem"] and "db3: 1 keys" in b["problem"] for b in result["blockers"]), text
    refused = invoke("run", "--source", url, "--target", valkey_target.url(), "--run-dir", tmp_path / "a")
    assert_clean_error(refused, 2, "outside db0", "db3: 1 keys", "--ignore-other-dbs")
    assert valkey_target.first.client().dbsize() == 0
    copied = invoke("run", "--source", url, "--target", valkey_target.url(), "--run-dir", tmp_path / "b",
                    "--ignore-other-dbs", "--json")
    assert copied.exit_code == 0, str(copied)
    assert "db3: 1 keys" in copied.stderr
    assert_same(snapshot(valkey_cluster_source), snapshot(valkey_target))


def test_another_database_of_a_valkey_cluster_can_be_migrated_on_its_own(valkey_cluster_source, valkey_target,
                                                                         tmp_path):
    node = valkey_cluster_source.first
    write(node.client(db=3), list(matrix_specs())[:40])
    url = valkey_cluster_source.url().replace("/0", "/3")
    outcome = invoke("run", "--source", url, "--target", valkey_target.url(), "--run-dir", tmp_path / "r", "--json")
    assert outcome.exit_code == 0, str(outcome)
    assert_same(snapshot(valkey_cluster_source, db=3), snapshot(valkey_target))
    missing = invoke("plan", "--source", valkey_cluster_source.url().replace("/0", "/16"), "--target",
                     valkey_target.url())
    assert_clean_error(missing, 2, "db 16 does not exist", "16 databases: 0 to 15")


def test_a_redis_cluster_still_refuses_another_database(cluster_source, valkey_target, tmp_path):
    outcome = invoke("run", "--source", cluster_source.url().replace("/0", "/3"), "--target", valkey_target.url(),
                     "--run-dir", tmp_path / "r")
    assert_clean_error(outcome, 2, "is a cluster, which has only db 0")
