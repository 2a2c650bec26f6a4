"""The full scan's fast path (first windows digested to columns, folded in C) gives exactly the per-slot digests
that the key-by-key path gives (DigestReader.read's views, as descent and repair read keys), for values of
every type, small and big (read on past their first window), with and without TTLs, and with hash tags; and
a changed value of any type still changes its slot's digest."""

from __future__ import annotations

import multiprocessing

from migrate.net.endpoints import Endpoint, discover
from migrate.net.keyspace import key_slot
from migrate.net.wire import Wire, pack
from migrate.verify.digest import DIGEST_TYPE_CODE
from migrate.verify.fullscan import ScanJob, _Worker
from migrate.verify.readers import STRING_WINDOW, WINDOW, DigestReader
from migrate.verify.slotdigest import SlotDigests

GRID = 1000
EXPIRE_AT = 4_102_444_800_000


def commands() -> list[bytes]:
    """Small values of each type (many, so that batches mix them), big ones past their first window, a stream."""
    out = []
    for index in range(3000):
        key = b"c:%d" % index if index % 7 else b"{tag}c:%d" % index
        kind = index % 6
        if kind == 0:
            out.append(pack(b"SET", key, b"v%d" % index))
        elif kind == 1:
            out.append(pack(b"RPUSH", key, b"a", b"b%d" % index))
        elif kind == 2:
            out.append(pack(b"SADD", key, b"m", b"n%d" % index))
        elif kind == 3:
            out.append(pack(b"ZADD", key, b"0.1", b"m", b"%d" % index, b"n"))
        elif kind == 4:
            out.append(pack(b"HSET", key, b"f", b"%d" % index))
        else:
            out.append(pack(b"SET", key, b""))
        if index % 3 == 0:
            out.append(pack(b"PEXPIREAT", key, b"%d" % (EXPIRE_AT + index)))
    many = 3 * WINDOW // 2
    out += [pack(b"SET", b"big:string", b"x" * (STRING_WINDOW + 10)),
            pack(b"SET", b"edge:string", b"y" * STRING_WINDOW),
            pack(b"RPUSH", b"big:list", *[b"%d" % i for i in range(many)]),
            pack(b"SADD", b"big:set", *[b"%d" % i for i in range(many)]),
            pack(b"ZADD", b"big:zset", *[part for i in range(many) for part in (b"%d" % i, b"m%d" % i)]),
            pack(b"HSET", b"big:hash", *[part for i in range(many) for part in (b"f%d" % i, b"%d" % i)]),
            pack(b"XADD", b"stream", b"1-1", b"f", b"v"), pack(b"PEXPIREAT", b"big:hash", b"%d" % EXPIRE_AT)]
    return out


def scanned(url: str) -> SlotDigests:
    topology = discover(Endpoint.from_url("source", url))
    job = ScanJob(topology.endpoint, topology.masters[0], topology.has_pexpiretime, GRID)
    parent, child = multiprocessing.Pipe()
    try:
        return _Worker(job, child).scan().digests
    finally:
        parent.close()
        child.close()


def read_key_by_key(url: str) -> SlotDigests:
    topology = discover(Endpoint.from_url("source", url))
    node = topology.masters[0]
    wire = Wire(topology.endpoint, node.host, node.port)
    try:
        keys = sorted(key for key in topology.client(node).scan_iter(count=1000))
        digests = SlotDigests()
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            for key, view in zip(chunk, DigestReader(wire, topology.has_pexpiretime).read(chunk)):
                digests.add(key_slot(key), key, DIGEST_TYPE_CODE[view.type], view.digest, view.expire_at, GRID)
        return digests
    finally:
        wire.close()


def same(a: SlotDigests, b: SlotDigests) -> bool:
    return a.totals == b.totals and a.types == b.types and a.with_ttl == b.with_ttl


def test_scan_columns_equal_key_by_key_views_and_see_every_change(standalone_source):
    url = standalone_source.url()
    client = standalone_source.client()
    topology = discover(Endpoint.from_url("source", url))
    wire = Wire(topology.endpoint, topology.masters[0].host, topology.masters[0].port)
    payload = commands()
    wire.send(b"".join(payload))
    assert not any(isinstance(reply, Exception) for reply in wire.read(len(payload)))
    wire.close()
    fast = scanned(url)
    assert same(fast, read_key_by_key(url))
    assert sum(fast.types) == client.dbsize()

    changes = [("SET", "c:6", "v6!"), ("RPUSH", "c:1", "x"), ("SADD", "c:2", "x"), ("ZADD", "c:3", "0.2", "m"),
               ("HSET", "c:4", "f", "x"), ("SETRANGE", "big:string", STRING_WINDOW + 5, "!"),
               ("LSET", "big:list", -1, "!"), ("ZADD", "big:zset", "1e-9", "m0"), ("PEXPIREAT", "c:5", EXPIRE_AT)]
    before = fast
    for command in changes:
        client.execute_command(*command)
        after = scanned(url)
        slot = key_slot(command[1].encode())
        assert after.totals[slot] != before.totals[slot], command
        assert [s for s in range(16384) if after.totals[s] != before.totals[s]] == [slot], command
        before = after
    assert same(before, read_key_by_key(url))

