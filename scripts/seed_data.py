#!/usr/bin/env python3
"""Deterministic, storefront-like Redis data generator for migration tests and demos.

The same ``seed`` and ``keys`` always produce the same key names, values and TTLs,
so a migrated copy can be compared against a fresh seeding. The data set covers
every Redis type and the awkward corners a migration must preserve: binary and
UTF-8 key names, hash tags, infinite and non-round zset scores, stream consumer
groups with pending entries, millisecond TTLs and keys that expire mid-run.

Importable (``seed(client, keys, seed)``) and runnable::

    python scripts/seed_data.py --url redis://:pw@127.0.0.1:6379/0 --keys 10000 --seed 1
"""

import argparse
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster

Command = tuple[Any, ...]
Client = redis.Redis | RedisCluster

# Redis TYPE reported for each generator kind; summary counts use it so tests can
# compare against a SCAN/TYPE walk of the server.
REDIS_TYPE = {
    "string": "string", "int": "string", "float": "string", "bytes": "string",
    "hll": "string", "bitmap": "string", "hash": "hash", "list": "list",
    "set": "set", "intset": "set", "zset": "zset", "geo": "zset", "stream": "stream",
}

TTL_MS_RANGE = (10 * 60 * 1000, 2 * 24 * 3600 * 1000)  # 10 minutes .. 2 days
SHORT_TTL_MS_RANGE = (1000, 4000)
CHUNK = 1000  # max members per command when writing big collections
STREAM_EPOCH_MS = 1_700_000_000_000

FIRST_NAMES = ["Ana", "Bo", "Chen", "Dmitri", "Émile", "Fatima", "Giulia", "Hiro", "Ingrid", "José"]
PRODUCTS = ["Espresso beans", "Café crème mug", "Teekanne", "Rucksack 30L", "Наушники",
            "手帕 set", "Water bottle", "Desk lamp", "Ski socks", "Board game"]
TAGS = ["sale", "new", "eco", "gift", "bestseller", "limited", "bundle", "clearance", "β-test", "🔥"]
LOCALES = ["en-US", "de-DE", "fr-FR", "ja-JP", "ru-RU", "pt-BR"]
EVENTS = ["order.created", "order.paid", "order.shipped", "cart.abandoned", "refund.issued"]
CITIES = [("berlin", 13.404954, 52.520008), ("tokyo", 139.691711, 35.689487),
          ("saopaulo", -46.633308, -23.550520), ("nyc", -74.005974, 40.712776),
          ("sydney", 151.209290, -33.868820), ("reykjavik", -21.942400, 64.146600)]


@dataclass(frozen=True)
class KeySpec:
    """One key to create: its name, generator kind, write commands and optional TTL."""

    name: bytes
    kind: str
    commands: Iterable[Command]
    ttl_ms: int | None = None
    big: bool = False
    short: bool = False


# Pre-built member pools: drawing from them with choices()/sample() is much faster
# than formatting a fresh random number per member.
SKUS = [f"sku:{n}" for n in range(100000, 200000)]
PLAYERS = [f"player:{n}" for n in range(100000)]
QUANTITIES = [1, 1, 1, 2, 2, 3, 5]


# --------------------------------------------------------------------------- helpers

def _ttl(rng: random.Random) -> int:
    """An odd millisecond TTL, so a copy that rounds to seconds is caught."""
    return rng.randint(*TTL_MS_RANGE) | 1


def _day(rng: random.Random) -> str:
    return f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _pairs(mapping: Iterable[tuple[Any, Any]]) -> list[Any]:
    return [x for pair in mapping for x in pair]


def _stream_commands(rng: random.Random, name: bytes, entries: int, readers: Sequence[str]) -> list[Command]:
    """XADD with explicit and ``ms-*`` IDs (deterministic, unlike ``*``), a consumer
    group, and XREADGROUP reads that leave entries pending per consumer."""
    cmds: list[Command] = []
    ms = STREAM_EPOCH_MS + rng.randrange(10**9)
    for _ in range(entries):
        ms += rng.randint(1, 5000)
        entry_id = f"{ms}-*" if rng.random() < 0.3 else f"{ms}-{rng.randrange(3)}"
        fields = {"event": rng.choice(EVENTS), "order": f"ord-{rng.getrandbits(40):010x}",
                  "amount": f"{rng.randint(100, 99999) / 100:.2f}",
                  "payload": _json({"items": rng.randint(1, 9), "locale": rng.choice(LOCALES)})}
        cmds.append(("XADD", name, entry_id, *_pairs(fields.items())))
    cmds.append(("XGROUP", "CREATE", name, "fulfillment", "0"))
    for reader in readers:
        cmds.append(("XREADGROUP", "GROUP", "fulfillment", reader,
                     "COUNT", rng.randint(1, max(1, entries // 2)), "STREAMS", name, ">"))
    return cmds


# --------------------------------------------------------------------------- normal keys
# Each generator returns (name, kind, commands); names are made unique by the caller.

Generated = tuple[bytes, str, list[Command]]


def _session(rng: random.Random, i: int, customers: int) -> Generated:
    cust = rng.randrange(customers)
    name = f"session:{rng.getrandbits(128):032x}".encode()
    value = _json({"user_id": cust, "cart": f"cart:{{cust:{cust}}}", "csrf": f"{rng.getrandbits(64):016x}",
                   "locale": rng.choice(LOCALES), "last_seen": 1_700_000_000 + rng.randrange(10**7),
                   "name": rng.choice(FIRST_NAMES)})
    return name, "string", [("SET", name, value)]


def _product_cache(rng: random.Random, i: int, customers: int) -> Generated:
    name = f"product:{100000 + i}:cache".encode()
    value = _json({"sku": 100000 + i, "title": rng.choice(PRODUCTS), "price": rng.randint(99, 99999) / 100,
                   "stock": rng.randint(0, 500), "tags": rng.sample(TAGS, rng.randint(0, 3))})
    return name, "string", [("SET", name, value)]


def _rate_limit(rng: random.Random, i: int, customers: int) -> Generated:
    ip = ".".join(str(rng.randint(1, 254)) for _ in range(4))
    name = f"ratelimit:{ip}:{rng.randrange(1440)}".encode()
    return name, "int", [("SET", name, rng.randint(-5, 10**6))]


def _price(rng: random.Random, i: int, customers: int) -> Generated:
    name = f"price:{100000 + i}:{rng.choice(['EUR', 'USD', 'JPY'])}".encode()
    value = rng.choice([rng.randint(1, 99999) / 100, rng.random() * 10**rng.randint(-9, 6)])
    return name, "float", [("SET", name, repr(value))]


def _fragment(rng: random.Random, i: int, customers: int) -> Generated:
    """Compressed-looking page fragments: arbitrary bytes, including NUL and 0xff."""
    name = f"fragment:/c/{rng.randrange(5000)}:{rng.getrandbits(32):08x}".encode()
    return name, "bytes", [("SET", name, b"\x1f\x8b\x08\x00" + rng.randbytes(rng.randint(16, 600)))]


def _cart(rng: random.Random, i: int, customers: int) -> Generated:
    name = f"cart:{{cust:{rng.randrange(customers)}}}".encode()
    skus = rng.choices(SKUS, k=rng.randint(1, 12))
    items: dict[str, Any] = dict(zip(skus, rng.choices(QUANTITIES, k=len(skus))))
    items["updated_at"] = 1_700_000_000 + rng.randrange(10**7)
    return name, "hash", [("HSET", name, *_pairs(items.items()))]


def _profile(rng: random.Random, i: int, customers: int) -> Generated:
    name = f"{{cust:{rng.randrange(customers)}}}:profile".encode()
    fields = {"name": rng.choice(FIRST_NAMES), "email": f"user{i}@example.com",
              "tier": rng.choice(["free", "silver", "gold"]), "avatar_sha1": rng.randbytes(20),
              "points": rng.randint(0, 10**5)}
    return name, "hash", [("HSET", name, *_pairs(fields.items()))]


def _recent_views(rng: random.Random, i: int, customers: int) -> Generated:
    name = f"{{cust:{rng.randrange(customers)}}}:recent".encode()
    return name, "list", [("RPUSH", name, *rng.choices(SKUS, k=rng.randint(1, 30)))]


def _tags(rng: random.Random, i: int, customers: int) -> Generated:
    name = f"product:{100000 + i}:tags".encode()
    return name, "set", [("SADD", name, *rng.sample(TAGS, rng.randint(1, len(TAGS))))]


def _category_members(rng: random.Random, i: int, customers: int) -> Generated:
    """Small integer sets, which Redis stores with the intset encoding."""
    name = f"category:{rng.randrange(10**6)}:skus".encode()
    return name, "intset", [("SADD", name, *rng.sample(range(10000), rng.randint(1, 60)))]


def _score(x: float) -> int | float:
    """Map a uniform draw to half integer points (some negative), half fractional ratings."""
    return int(x * 2_000_000) - 1000 if x < 0.5 else (x - 0.5) * 10_100 - 50


def _leaderboard(rng: random.Random, i: int, customers: int) -> Generated:
    name = f"leaderboard:{rng.choice(['spring', 'summer', 'fall'])}:{_day(rng)}:{rng.randrange(1000)}".encode()
    size = rng.randint(1, 40)
    players = rng.choices(PLAYERS, k=size)  # a repeated player just keeps its last score
    scores = [_score(rng.random()) for _ in range(size)]
    return name, "zset", [("ZADD", name, *_pairs(zip(map(repr, scores), players)))]


def _events(rng: random.Random, i: int, customers: int) -> Generated:
    name = f"events:orders:{{cust:{rng.randrange(customers)}}}".encode()
    return name, "stream", _stream_commands(rng, name, rng.randint(2, 15), ["worker-1"])


def _uniques(rng: random.Random, i: int, customers: int) -> Generated:
    name = f"uniques:/p/{rng.randrange(10**5)}:{_day(rng)}".encode()
    return name, "hll", [("PFADD", name, *(f"v{rng.getrandbits(48)}" for _ in range(rng.randint(1, 200))))]


def _active_users(rng: random.Random, i: int, customers: int) -> Generated:
    name = f"active:{_day(rng)}:{rng.randrange(10**5)}".encode()
    return name, "bitmap", [("SETBIT", name, rng.randrange(100_000), 1) for _ in range(rng.randint(1, 20))]


def _stores(rng: random.Random, i: int, customers: int) -> Generated:
    city, lon, lat = rng.choice(CITIES)
    name = f"stores:{city}:{rng.randrange(10**5)}".encode()
    points = [(f"{lon + rng.uniform(-0.5, 0.5):.6f}", f"{lat + rng.uniform(-0.5, 0.5):.6f}", f"store:{n}")
              for n in range(rng.randint(1, 20))]
    return name, "geo", [("GEOADD", name, *(x for p in points for x in p))]


# Weights in percent: ~55% strings, then hashes, lists, sets, zsets, and a few of the rest.
GENERATORS: list[tuple[Callable[[random.Random, int, int], Generated], float]] = [
    (_session, 20), (_product_cache, 15), (_rate_limit, 8), (_price, 4), (_fragment, 8),
    (_cart, 8), (_profile, 7), (_recent_views, 10), (_tags, 5), (_category_members, 4),
    (_leaderboard, 8), (_events, 1), (_uniques, 1), (_active_users, 0.5), (_stores, 0.5),
]
_CUM_WEIGHTS = list(accumulate(w for _, w in GENERATORS))


# --------------------------------------------------------------------------- fixed keys

def big_key_specs(seed: int) -> list[KeySpec]:
    """Keys large enough to need chunked copies: a 2 MB string and 50k/100k/30k collections."""
    rng = random.Random(f"{seed}:big")

    def chunks(cmd: str, name: bytes, count: int, member: Callable[[int], Sequence[Any]]) -> Iterator[Command]:
        for start in range(0, count, CHUNK):
            yield (cmd, name, *(x for n in range(start, min(count, start + CHUNK)) for x in member(n)))

    blob = rng.randbytes(2 * 1024 * 1024)
    hash_salt, list_salt, zset_salt = (rng.getrandbits(32) for _ in range(3))
    return [
        KeySpec(b"big:catalog:blob", "bytes", [("SET", b"big:catalog:blob", blob)], big=True),
        KeySpec(b"big:catalog:prices", "hash", chunks(
            "HSET", b"big:catalog:prices", 50_000,
            lambda n: (f"sku:{n}", f"{(n * 7919 + hash_salt) % 100000 / 100:.2f}")), big=True),
        KeySpec(b"big:audit:log", "list", chunks(
            "RPUSH", b"big:audit:log", 100_000,
            lambda n: (f"{n}:{(n * 2654435761 + list_salt) & 0xFFFFFFFF:08x}",)), big=True),
        KeySpec(b"big:leaderboard:alltime", "zset", chunks(
            "ZADD", b"big:leaderboard:alltime", 30_000,
            lambda n: (repr(((n * 40503 + zset_salt) % 10**6) / 7), f"player:{n}")), big=True),
    ]


def edge_key_specs(seed: int) -> list[KeySpec]:
    """One key per type plus awkward names and values; several share the ``{edge}`` slot."""
    rng = random.Random(f"{seed}:edge")
    zscores = [(b"+inf", "max"), (b"-inf", "min"), (repr(0.1 + 0.2), "point-three-ish"), (repr(0.3), "point-three"),
               (repr(1.0), "one"), (repr(1.0 + 1e-9), "one-plus-nano"), (repr(-273.15), "negative"),
               (repr(5e-324), "denormal"), ("0", "zero")]
    stores = [(f"{lon:.6f}", f"{lat:.6f}", city) for city, lon, lat in CITIES]
    return [
        KeySpec(b"bin:\x00\xff\x01\xfe:key", "bytes",
                [("SET", b"bin:\x00\xff\x01\xfe:key", b"\x00\xff\x00binary\r\n\xfe\x80" + rng.randbytes(64))]),
        KeySpec("ключ:😀".encode(), "hash",
                [("HSET", "ключ:😀".encode(), "имя", "значение", "emoji", "😀🛒", "\x00bin", b"\xff\x00")],
                ttl_ms=86_399_937),
        KeySpec(b"key with spaces\nand newline\r\tend", "list",
                [("RPUSH", b"key with spaces\nand newline\r\tend", b"", b"a b", b"\n", b"\x00\xff")], ttl_ms=3_600_007),
        KeySpec(b"empty:value", "string", [("SET", b"empty:value", b"")]),
        KeySpec(b"blob:1mb", "bytes", [("SET", b"blob:1mb", rng.randbytes(1024 * 1024))]),
        KeySpec(b"counter:int:max", "int", [("SET", b"counter:int:max", "9223372036854775807")]),
        KeySpec(b"counter:int:neg", "int", [("SET", b"counter:int:neg", "-42")]),
        KeySpec(b"price:float:edge", "float", [("SET", b"price:float:edge", repr(0.1 + 0.2))], ttl_ms=172_799_999),
        KeySpec(b"{edge}:intset", "intset", [("SADD", b"{edge}:intset", *range(-50, 50))]),
        KeySpec(b"{edge}:set", "set", [("SADD", b"{edge}:set", b"", b"\x00", "λ", "with space", b"\xff\xfe")]),
        KeySpec(b"{edge}:zset", "zset", [("ZADD", b"{edge}:zset", *_pairs(zscores))]),
        KeySpec(b"{edge}:hash", "hash", [("HSET", b"{edge}:hash", b"\x00field", b"", "f", b"\xff")]),
        KeySpec(b"{edge}:stream", "stream", _stream_commands(rng, b"{edge}:stream", 20, ["worker-1", "worker-2"])),
        KeySpec(b"{edge}:hll", "hll", [("PFADD", b"{edge}:hll", *(f"visitor:{n}" for n in range(500)))]),
        KeySpec(b"{edge}:bitmap", "bitmap", [("SETBIT", b"{edge}:bitmap", bit, 1) for bit in (0, 7, 1000, 65535)]),
        KeySpec(b"{edge}:geo", "geo", [("GEOADD", b"{edge}:geo", *(x for p in stores for x in p))]),
    ]


def short_ttl_specs(seed: int, count: int) -> list[KeySpec]:
    """One-time codes that expire 1-4 s after seeding, i.e. during a migration."""
    rng = random.Random(f"{seed}:short")
    specs = []
    for n in range(count):
        name = f"otp:{{phone:{n}}}:{rng.getrandbits(32):08x}".encode()
        specs.append(KeySpec(name, "string", [("SET", name, f"{rng.randrange(10**6):06d}")],
                             ttl_ms=rng.randint(*SHORT_TTL_MS_RANGE) | 1, short=True))
    return specs


# --------------------------------------------------------------------------- key stream

def _unique(name: bytes, seen: set[bytes], i: int) -> bytes:
    """Random names may collide; suffix the key index so the key count stays exact."""
    if name in seen:
        name = b"%s:%d" % (name, i)
    seen.add(name)
    return name


def _rename(commands: list[Command], old: bytes, new: bytes) -> list[Command]:
    return [tuple(new if arg == old else arg for arg in cmd) for cmd in commands]


def normal_key_specs(count: int, seed: int, ttl_fraction: float = 0.3) -> Iterator[KeySpec]:
    """Storefront keys drawn by weight; about ``ttl_fraction`` of them get a ms TTL."""
    rng = random.Random(seed)
    customers = max(8, count // 6)  # small pool, so many keys share a {cust:N} slot
    gens = rng.choices([g for g, _ in GENERATORS], cum_weights=_CUM_WEIGHTS, k=count)
    seen: set[bytes] = set()
    for i, gen in enumerate(gens):
        name, kind, commands = gen(rng, i, customers)
        unique = _unique(name, seen, i)
        if unique != name:
            commands = _rename(commands, name, unique)
        ttl = _ttl(rng) if rng.random() < ttl_fraction else None
        yield KeySpec(unique, kind, commands, ttl_ms=ttl)


def key_specs(keys: int, seed: int = 1, *, big_keys: bool = True, ttl_fraction: float = 0.3,
              short_ttl_keys: int = 3) -> Iterator[KeySpec]:
    """All keys in write order; short-TTL keys come last so they outlive the seeding."""
    fixed = (big_key_specs(seed) if big_keys else []) + edge_key_specs(seed)
    short = short_ttl_specs(seed, short_ttl_keys)
    yield from fixed
    yield from normal_key_specs(max(0, keys - len(fixed) - len(short)), seed, ttl_fraction)
    yield from short


# --------------------------------------------------------------------------- writing

def _write_commands(spec: KeySpec) -> Iterator[Command]:
    """The spec's commands plus its TTL (inline PX for a single SET, else PEXPIRE)."""
    commands = spec.commands
    if spec.ttl_ms is not None and isinstance(commands, list) and len(commands) == 1 and commands[0][0] == "SET":
        yield (*commands[0], "PX", spec.ttl_ms)
        return
    yield from commands
    if spec.ttl_ms is not None:
        yield ("PEXPIRE", spec.name, spec.ttl_ms)


class _Summary:
    """Running totals, so written keys' values are not kept in memory."""

    def __init__(self) -> None:
        self.keys = self.with_ttl = 0
        self.by_type: Counter[str] = Counter()
        self.by_kind: Counter[str] = Counter()
        self.big_keys: list[str] = []
        self.short_ttl: list[str] = []

    def add(self, spec: KeySpec) -> None:
        self.keys += 1
        self.by_type[REDIS_TYPE[spec.kind]] += 1
        self.by_kind[spec.kind] += 1
        self.with_ttl += spec.ttl_ms is not None
        if spec.big:
            self.big_keys.append(spec.name.decode())
        if spec.short:
            self.short_ttl.append(spec.name.decode())

    def as_dict(self) -> dict[str, Any]:
        return {"keys": self.keys, "by_type": dict(sorted(self.by_type.items())),
                "by_kind": dict(sorted(self.by_kind.items())), "with_ttl": self.with_ttl,
                "big_keys": self.big_keys, "short_ttl": self.short_ttl}


def seed(client: Client, keys: int, seed: int = 1, *, big_keys: bool = True, ttl_fraction: float = 0.3,
         short_ttl_keys: int = 3, batch: int = 1000) -> dict[str, Any]:
    """Write the deterministic data set into ``client`` (Redis or RedisCluster) via
    non-transactional pipelines of ``batch`` commands; return a summary."""
    pipe = client.pipeline(transaction=False)
    queued = 0
    summary = _Summary()
    for spec in key_specs(keys, seed, big_keys=big_keys, ttl_fraction=ttl_fraction,
                          short_ttl_keys=short_ttl_keys):
        for command in _write_commands(spec):
            pipe.execute_command(*command)
            queued += 1
            if queued >= batch:
                pipe.execute()
                queued = 0
        summary.add(spec)
    if queued:
        pipe.execute()
    return summary.as_dict()


# --------------------------------------------------------------------------- CLI

def _url_for(url: str, db: int | None, tls: bool) -> str:
    """redis-py lets URL parts override keyword arguments, so --db and --tls-ca
    have to be applied to the URL itself."""
    parts = urlsplit(url)
    scheme = "rediss" if tls else parts.scheme
    path = f"/{db}" if db is not None else parts.path
    return urlunsplit((scheme, parts.netloc, path, parts.query, parts.fragment))


def connect(url: str, *, cluster: bool = False, db: int | None = None, tls_ca: str | None = None) -> Client:
    """Build a bytes-mode client for a standalone server or a cluster."""
    if cluster and db not in (None, 0):
        raise SystemExit("--db is not supported with --cluster (cluster mode only has db 0)")
    kwargs: dict[str, Any] = {"ssl_ca_certs": tls_ca} if tls_ca else {}
    if cluster:
        return RedisCluster.from_url(_url_for(url, None, bool(tls_ca)), **kwargs)
    return redis.Redis.from_url(_url_for(url, db, bool(tls_ca)), **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--keys", type=int, default=10_000, help="approximate total number of keys")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cluster", action="store_true", help="connect with RedisCluster")
    parser.add_argument("--no-big-keys", dest="big_keys", action="store_false")
    parser.add_argument("--db", type=int, help="override the database number in --url")
    parser.add_argument("--tls-ca", help="CA bundle; implies TLS (rediss://)")
    parser.add_argument("--ttl-fraction", type=float, default=0.3)
    parser.add_argument("--short-ttl-keys", type=int, default=3)
    args = parser.parse_args(argv)

    client = connect(args.url, cluster=args.cluster, db=args.db, tls_ca=args.tls_ca)
    started = time.monotonic()
    summary = seed(client, args.keys, args.seed, big_keys=args.big_keys,
                   ttl_fraction=args.ttl_fraction, short_ttl_keys=args.short_ttl_keys)
    elapsed = time.monotonic() - started
    summary["seconds"] = round(elapsed, 3)
    summary["keys_per_s"] = round(summary["keys"] / elapsed) if elapsed else None
    json.dump(summary, sys.stdout, indent=2)
    print()
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
