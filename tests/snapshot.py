"""An independent reading of a whole Redis, for asserting outcomes in tests.

It shares no code with the verify stage on purpose: a bug there must not hide a bug here.
"""

from __future__ import annotations

import time

import redis


def masters(client_or_cluster) -> list[redis.Redis]:
    """Plain clients for every master of a testbed server or cluster."""
    nodes = getattr(client_or_cluster, "nodes", None)
    if nodes is None:
        return [client_or_cluster.client()]
    return [node.client() for node in nodes]


def read_value(client: redis.Redis, key: bytes):
    kind = client.type(key).decode()
    if kind == "string":
        return kind, client.get(key)
    if kind == "hash":
        return kind, sorted(client.hgetall(key).items())
    if kind == "list":
        return kind, client.lrange(key, 0, -1)
    if kind == "set":
        return kind, sorted(client.smembers(key))
    if kind == "zset":
        return kind, sorted(client.zrange(key, 0, -1, withscores=True))
    if kind == "stream":
        entries = client.xrange(key, "-", "+")
        groups = sorted((g["name"], g["last-delivered-id"]) for g in client.xinfo_groups(key))
        return kind, (entries, groups, _stream_detail(client, key, [name for name, _ in groups]))
    if kind == "none":
        return None
    return kind, None


def snapshot(server, db: int = 0) -> dict[bytes, tuple]:
    """key -> (type, canonical value, absolute expiry ms or -1) for every key on every master.

    The same reads as `read_value` and `_expiry`, pipelined in batches (one round trip per step)."""
    result = {}
    for client in masters(server):
        if db:
            pool = client.connection_pool
            client = redis.Redis(connection_pool=redis.ConnectionPool(**{**pool.connection_kwargs, "db": db},
                                                                       connection_class=pool.connection_class))
        keys = list(dict.fromkeys(client.scan_iter(count=1000)))
        for start in range(0, len(keys), _BATCH):
            result.update(_read_batch(client, keys[start:start + _BATCH]))
    return result


_BATCH = 500
_READS = {
    "string": lambda p, k: [p.get(k)],
    "hash": lambda p, k: [p.hgetall(k)],
    "list": lambda p, k: [p.lrange(k, 0, -1)],
    "set": lambda p, k: [p.smembers(k)],
    "zset": lambda p, k: [p.zrange(k, 0, -1, withscores=True)],
    "stream": lambda p, k: [p.xrange(k, "-", "+"), p.xinfo_groups(k)],
}


def _stream_detail(client: redis.Redis, key: bytes, groups: list[bytes]) -> tuple:
    """What a queue's workers depend on besides the entries: the last generated ID, and per group its consumers
    and every pending entry with its consumer and delivery count (idle times run on: left out)."""
    detail = [client.xinfo_stream(key)["last-generated-id"]]
    for name in groups:
        consumers = sorted((c["name"], c["pending"]) for c in client.xinfo_consumers(key, name))
        pending = [(p["message_id"], p["consumer"], p["times_delivered"])
                   for p in client.xpending_range(key, name, "-", "+", 1_000_000)]
        detail.append((name, consumers, pending))
    return tuple(detail)


def _canonical(kind: str, replies: list):
    if kind == "hash":
        return sorted(replies[0].items())
    if kind in ("set", "zset"):
        return sorted(replies[0])
    if kind == "stream":
        return replies[0], sorted((g["name"], g["last-delivered-id"]) for g in replies[1])
    return replies[0]


def _with_stream_detail(client: redis.Redis, key: bytes, value: tuple) -> tuple:
    entries, groups = value
    return entries, groups, _stream_detail(client, key, [name for name, _ in groups])


def _read_batch(client: redis.Redis, keys: list[bytes]) -> dict[bytes, tuple]:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
    kinds = [kind.decode() for kind in pipe.execute()]
    pipe = client.pipeline(transaction=False)
    counts = []
    for key, kind in zip(keys, kinds):
        queued = _READS[kind](pipe, key) if kind in _READS else []
        counts.append(len(queued))
        pipe.pexpiretime(key)
    replies = pipe.execute(raise_on_error=False)
    result, pos = {}, 0
    for key, kind, count in zip(keys, kinds, counts):
        values, expiry = replies[pos:pos + count], replies[pos + count]
        pos += count + 1
        if kind == "none" or any(isinstance(v, Exception) for v in values):
            continue  # gone since the scan (or changed type under our feet): as read_value would skip it
        if isinstance(expiry, Exception):  # Redis 6.2 has no PEXPIRETIME
            expiry = _expiry(client, key)
        if expiry == -2:
            continue
        value = _canonical(kind, values) if kind in _READS else None
        if kind == "stream":
            value = _with_stream_detail(client, key, value)
        result[key] = (kind, value, expiry)
    _add_field_ttls(client, result, [k for k, kind in zip(keys, kinds) if kind == "hash" and k in result])
    return result


def _add_field_ttls(client: redis.Redis, result: dict, hashes: list[bytes]) -> None:
    """A hash whose fields have their own expiries (Valkey 9, Redis 7.4+) reads as (fields, [(field, expiry)]);
    on servers without field TTLs (the command is refused) every hash stays as it is."""
    if not hashes:
        return
    pipe = client.pipeline(transaction=False)
    for key in hashes:
        fields = [f for f, _ in result[key][1]]
        pipe.execute_command("HPEXPIRETIME", key, "FIELDS", len(fields), *fields)
    for key, ttls in zip(hashes, pipe.execute(raise_on_error=False)):
        if isinstance(ttls, Exception):
            return
        expiring = [(f, ttl) for (f, _), ttl in zip(result[key][1], ttls) if ttl >= 0]
        if expiring:
            kind, value, expiry = result[key]
            result[key] = (kind, (value, expiring), expiry)


def _expiry(client: redis.Redis, key: bytes) -> int:
    """Absolute expiry in ms; Redis 6.2 has no PEXPIRETIME, so derive it from PTTL there."""
    try:
        return client.pexpiretime(key)
    except redis.ResponseError:
        pttl = client.pttl(key)
        if pttl == -2:
            return -2  # expired since its value was read: gone, not "no expiry"
        return -1 if pttl < 0 else int(time.time() * 1000) + pttl


def assert_same(source: dict, target: dict, ttl_tolerance_ms: int = 2000) -> None:
    """Same keys, types and values; expiries equal within the tolerance.

    Keys due to expire within a few seconds may legitimately be gone on one side: they are left out.
    """
    horizon = int(time.time() * 1000) + 5000
    source = {k: v for k, v in source.items() if v[2] == -1 or v[2] > horizon}
    target = {k: v for k, v in target.items() if v[2] == -1 or v[2] > horizon}
    missing = set(source) - set(target)
    extra = set(target) - set(source)
    assert not missing, f"{len(missing)} keys missing on target, e.g. {sorted(missing)[:5]}"
    assert not extra, f"{len(extra)} extra keys on target, e.g. {sorted(extra)[:5]}"
    for key, (kind, value, expiry) in source.items():
        t_kind, t_value, t_expiry = target[key]
        assert kind == t_kind, f"{key!r}: type {kind} vs {t_kind}"
        assert value == t_value, f"{key!r}: value differs"
        if expiry == -1:
            assert t_expiry == -1, f"{key!r}: target has an expiry, source has none"
        else:
            assert abs(expiry - t_expiry) <= ttl_tolerance_ms, f"{key!r}: expiry {expiry} vs {t_expiry}"


# --- streams' consumer groups in full: what XREADGROUP and XACK change without a keyspace event --------

def stream_groups(server, db: int = 0) -> dict[bytes, list[tuple]]:
    """stream key -> its groups, each (name, last-delivered-id, entries-read or None, consumers, PEL):
    consumers as sorted (name, pending count), the PEL as (entry id, consumer, delivery count) in id order.
    Idle times and seen-times are left out: they are clocks, not state a copy can keep."""
    result = {}
    for client in masters(server):
        if db:
            client = redis.Redis(connection_pool=redis.ConnectionPool(
                **{**client.connection_pool.connection_kwargs, "db": db},
                connection_class=client.connection_pool.connection_class))
        for key in dict.fromkeys(client.scan_iter(count=1000, _type="stream")):
            groups = [_group(client, key, group) for group in client.xinfo_groups(key)]
            if groups:
                result[key] = sorted(groups)
    return result


def _group(client: redis.Redis, key: bytes, group: dict) -> tuple:
    name = group["name"]
    consumers = sorted((c["name"], c["pending"]) for c in client.xinfo_consumers(key, name))
    pel = []
    start = "-"
    while True:  # the whole pending list, 1,000 at a time
        page = client.xpending_range(key, name, min=start, max="+", count=1000)
        pel += [(p["message_id"], p["consumer"], p["times_delivered"]) for p in page]
        if len(page) < 1000:
            break
        start = "(" + page[-1]["message_id"].decode()
    return name, group["last-delivered-id"], group.get("entries-read"), consumers, pel


def assert_same_groups(source: dict, target: dict) -> None:
    """Every stream's groups, consumers and pending entries equal (from `stream_groups` on both sides)."""
    missing = set(source) - set(target)
    extra = set(target) - set(source)
    assert not missing, f"{len(missing)} streams lost their groups on target, e.g. {sorted(missing)[:5]}"
    assert not extra, f"{len(extra)} streams have groups only on target, e.g. {sorted(extra)[:5]}"
    for key, groups in source.items():
        for mine, theirs in zip(groups, target[key]):
            assert mine[:2] == theirs[:2], f"{key!r}: group {mine[:3]} vs {theirs[:3]}"
            if mine[2] is not None and theirs[2] is not None:  # Redis 6.2 has no entries-read
                assert mine[2] == theirs[2], f"{key!r}: group {mine[:3]} vs {theirs[:3]}"
            assert mine[3] == theirs[3], f"{key!r} group {mine[0]!r}: consumers {mine[3]} vs {theirs[3]}"
            assert mine[4] == theirs[4], f"{key!r} group {mine[0]!r}: pending entries differ " \
                                         f"({len(mine[4])} vs {len(theirs[4])})"
        assert len(groups) == len(target[key]), f"{key!r}: {len(groups)} groups vs {len(target[key])}"
