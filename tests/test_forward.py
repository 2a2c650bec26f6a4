"""Compare-and-set forwarding into the serverless-like TLS target: an app's write on the cache is never
overwritten, keys only the cache has are never deleted, conflicts are named in conflicts.jsonl."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest

import testbed
from migrate.net.endpoints import Endpoint, discover
from migrate.rundir import RunDir
from migrate.sync.baseline import Baseline, digest
from migrate.sync.forward import APPLIED, CONFLICT, DELETED, UNCHANGED, Forwarder


@pytest.fixture
def sides(standalone_source, serverless_target, run_dir):
    rd = RunDir(run_dir, create=True)
    target = discover(Endpoint.from_url("target", serverless_target.url()))
    forwarder = Forwarder(rd, target)
    yield standalone_source.client(), serverless_target.first.client(), forwarder, rd
    forwarder.close()
    forwarder.baseline.close()


def copied(source, cache, baseline: Baseline, key: bytes) -> None:
    """What sync does before the flip: copy the key's DUMP and record it in the baseline."""
    payload, expire_at = source.dump(key), source.pexpiretime(key)
    cache.restore(key, 0 if expire_at < 0 else expire_at, payload, replace=True, absttl=True)
    baseline.record([(key, digest(payload, expire_at))])


def forward(source, forwarder: Forwarder, key: bytes) -> str:
    payload = source.dump(key)
    return forwarder.apply_dump(key, payload, source.pexpiretime(key) if payload is not None else -1)


def conflicts(rd: RunDir) -> list[dict]:
    path = rd.path / "conflicts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_an_unchanged_key_is_forwarded_and_a_cache_write_never_overwritten(sides):
    source, cache, forwarder, rd = sides
    for key in (b"session:1", b"session:2"):
        source.set(key, b"v1", px=600_000)
        copied(source, cache, forwarder.baseline, key)
    cache.set(b"session:2", b"written by an app on the cache")   # the app's write after the flip
    source.set(b"session:1", b"v2", px=600_000)                   # an old task's writes
    source.set(b"session:2", b"v2", px=600_000)
    assert forward(source, forwarder, b"session:1") == APPLIED
    assert forward(source, forwarder, b"session:2") == CONFLICT
    assert cache.get(b"session:1") == b"v2" and abs(cache.pexpiretime(b"session:1") -
                                                    source.pexpiretime(b"session:1")) == 0
    assert cache.get(b"session:2") == b"written by an app on the cache" and cache.pttl(b"session:2") == -1
    source.set(b"session:2", b"v3")   # the key stays the cache's: no second write, one conflict line
    assert forward(source, forwarder, b"session:2") == CONFLICT
    assert cache.get(b"session:2") == b"written by an app on the cache"
    assert [c["key"] for c in conflicts(rd)] == ["session:2"]
    assert forwarder.counts.forwarded == 1 and forwarder.counts.conflicts == 1 and forwarder.counts.dropped == 2
    # a later forward of an unchanged key goes on from the new baseline
    source.incr(b"session:1x")
    assert forward(source, forwarder, b"session:1x") == APPLIED
    source.incr(b"session:1x")
    assert forward(source, forwarder, b"session:1x") == APPLIED
    assert cache.get(b"session:1x") == b"2"
    mode = stat.S_IMODE(os.stat(forwarder.baseline.path).st_mode)
    assert mode == 0o600


def test_keys_only_the_cache_has_are_never_deleted(sides):
    source, cache, forwarder, rd = sides
    cache.set(b"cart:new", b"created by an app on the cache")
    source.set(b"cart:old", b"x")
    copied(source, cache, forwarder.baseline, b"cart:old")
    # the old side never had cart:new; a delete forwarded for it (e.g. an old task's DEL) must not remove it
    assert forwarder.apply_dump(b"cart:new", None) == CONFLICT
    assert cache.get(b"cart:new") == b"created by an app on the cache"
    # a key sync put there and the old side deleted is deleted; a delete of an absent key changes nothing
    source.delete(b"cart:old")
    assert forward(source, forwarder, b"cart:old") == DELETED
    assert cache.exists(b"cart:old") == 0
    assert forwarder.apply_dump(b"cart:gone", None) == UNCHANGED
    # a key the old side creates after the flip, absent on the cache: created there
    source.hset(b"cart:fresh", mapping={b"a": b"1"})
    assert forward(source, forwarder, b"cart:fresh") == APPLIED
    assert cache.hgetall(b"cart:fresh") == {b"a": b"1"}
    # an app deleting a key on the cache owns that deletion too
    source.set(b"lock:1", b"old")
    copied(source, cache, forwarder.baseline, b"lock:1")
    cache.delete(b"lock:1")
    source.set(b"lock:1", b"again")
    assert forward(source, forwarder, b"lock:1") == CONFLICT and cache.exists(b"lock:1") == 0
    assert sorted(c["key"] for c in conflicts(rd)) == ["cart:new", "lock:1"]


def test_a_key_that_expired_on_the_cache_is_not_an_app_write(sides):
    source, cache, forwarder, _ = sides
    source.set(b"api:1", b"cached", px=300)
    copied(source, cache, forwarder.baseline, b"api:1")
    time.sleep(0.5)
    assert cache.exists(b"api:1") == 0
    source.set(b"api:1", b"refilled", ex=300)
    assert forward(source, forwarder, b"api:1") == APPLIED
    assert cache.get(b"api:1") == b"refilled"


def test_big_keys_and_struct_records_go_through_the_same_compare_and_set(sides):
    source, cache, forwarder, _ = sides
    from migrate.datapath.reader import DumpOptions, read_records
    source_topology = discover(Endpoint.from_url("source", f"redis://:{source.connection_pool.connection_kwargs['password']}"
                                                 f"@127.0.0.1:{source.connection_pool.connection_kwargs['port']}/0"))
    source.rpush(b"list:big", *[b"%d" % i for i in range(3000)])
    copied(source, cache, forwarder.baseline, b"list:big")
    source.rpush(b"list:big", b"more")
    records, _ = read_records(source_topology, [b"list:big"], DumpOptions(struct_all=True))
    assert len(records) >= 1 and not records[0].payload
    assert forwarder.apply(b"list:big", records) == APPLIED
    assert cache.llen(b"list:big") == 3001 and cache.lindex(b"list:big", -1) == b"more"


def test_the_baseline_of_the_cache_is_made_on_the_server_as_in_python(sides):
    """The cutover records the cache's state of keys sync did not record; the server-side digest must be the one
    baseline.digest makes, or every such key would look changed by an app after the flip."""
    from migrate.sync.forward import baseline_from_target
    _, cache, forwarder, rd = sides
    cache.set(b"plain", b"v")
    cache.set(b"ttl", b"12345", px=600_000)
    cache.hset(b"hash", mapping={b"f%d" % i: b"x" * i for i in range(300)})
    forwarder.baseline.record([(b"plain", b"recorded by sync")])
    assert baseline_from_target(rd, forwarder.target) == 2          # a known key keeps sync's row
    for key in (b"ttl", b"hash"):
        assert forwarder.baseline.get(key) == (True, digest(cache.dump(key), cache.pexpiretime(key)))
    assert forwarder.baseline.get(b"plain") == (True, b"recorded by sync")


def test_the_baseline_of_a_cache_that_refuses_scripts_is_made_from_dump(certs, tmp_path, run_dir):
    """Where EVAL is refused, the same digests come from DUMP + PEXPIRETIME, over several SCAN batches: every key
    recorded once, with the digest baseline.digest makes."""
    from migrate.sync.forward import baseline_from_target
    node = testbed.start_serverless_like(tmp_path / "scriptless", certs, password="pw",
                                         extra=("--rename-command", "EVAL", "", "--rename-command", "EVALSHA", ""))
    try:
        cache = node.first.client()
        with cache.pipeline(transaction=False) as pipe:
            for index in range(5000):
                pipe.set(b"k:%d" % index, b"v%d" % index, px=600_000 if index % 3 == 0 else None)
            pipe.execute()
        rd = RunDir(run_dir, create=True)
        assert baseline_from_target(rd, discover(Endpoint.from_url("target", node.url()))) == 5000
        with Baseline(rd) as baseline:
            assert len(baseline) == 5000
            for key in (b"k:0", b"k:1", b"k:4999"):
                assert baseline.get(key) == (True, digest(cache.dump(key), cache.pexpiretime(key)))
    finally:
        node.stop()
