"""Read-only preflight: what will be migrated, how, into what, and what would stop it.

It never writes to the source. On the target it only DUMPs a scratch key (set and deleted at once) to learn
the RDB version, which decides the replay mode. The verdict is "go" or "blockers"; each blocker says its fix.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass

import redis

from ..keynames import readable
from ..net.endpoints import Node, Topology, probe_rdb_version, translated_errors
from ..net.keyspace import LENGTH_COMMANDS, estimated_size
from ..net.rdb import rdb_version_of
from .aws import Clients, describe_serverless_cache, parameter_history
from .cutover import DEFAULT_PREFIX, LABEL_AFTER, LABEL_BEFORE, parameter_names

GB = 10**9  # the cache's DataStorage unit, read as the smaller decimal GB: the conservative choice
ECPU_PRICE_PER_MILLION = 0.0034
STORAGE_PRICE_GB_MONTH = 0.125
ECPU_BYTES = 1024  # 1 ECPU per KB written, at least 1 per request
LARGEST_SHOWN = 10


@dataclass(frozen=True)
class SampledKey:
    key: bytes
    node: Node
    type: str
    has_ttl: bool
    size: int


def plan(source: Topology, target: Topology, db: int, *, serverless_cache: str | None = None,
         env: str | None = None, prefix: str = DEFAULT_PREFIX, sample: int = 5000, storage_headroom: float = 1.5,
         clients: Clients | None = None) -> dict:
    """Survey both sides (and the cache and SSM when named) and collect blockers with their fixes.
    `db` is the source database to survey; the caller opened both sides (`commands.open_source`)."""
    clients = clients or Clients()
    names = parameter_names(env, prefix) if env else None
    blockers: list[dict] = []
    warnings: list[str] = []

    src = survey_source(source, db, sample, blockers, warnings)
    tgt = {**_side(target), "keys": target.key_count(), "rdb_version": probe_rdb_version(target)}
    if tgt["keys"]:
        blockers.append(_blocker(f"the target already holds {tgt['keys']} keys",
                                 "flush it if they are leftovers, or pass --allow-nonempty-target to replay if they "
                                 "are meant to stay (a resumed replay, or data the apps already wrote there)"))
    src.update(_rdb_or_expected(source, src["rdb_version"]), hash_field_ttl_keys=_keys_with_field_ttls(source, db))
    result = {"source": src, "target": tgt, "replay": _replay_mode(src["rdb_version"], tgt["rdb_version"]),
              "types": type_paths(source, target, src, tgt["rdb_version"])}
    if serverless_cache:
        result["serverless_cache"] = _cache_section(clients, serverless_cache, src, target, storage_headroom,
                                                    blockers, warnings)
    if names:
        result["ssm"] = _ssm_section(clients, names, source, target, blockers, warnings)
    result.update(verdict="blockers" if blockers else "go", blockers=blockers, warnings=warnings)
    return result


def _blocker(problem: str, fix: str) -> dict:
    return {"problem": problem, "fix": fix}


def _side(topology: Topology) -> dict:
    described = topology.describe()
    described["masters"] = {node.name: sum(end - start + 1 for start, end in node.slots) for node in topology.masters}
    return described


# --- the source --------------------------------------------------------------------------------------

def survey_source(source: Topology, db: int, sample: int, blockers: list[dict], warnings: list[str]) -> dict:
    """Keys, memory, other databases and a random sample: histogram, TTL share, largest keys, data size."""
    with translated_errors(source.endpoint):
        keys_per_master = {node.name: source.client(node, db).dbsize() for node in source.masters}
        memory = _memory(source)
        other_dbs, unavailable = source.other_databases(db)
        sampled, method = sample_keys(source, sample, db)
        rdb = _source_rdb_version(source, sampled, db)
    total = sum(keys_per_master.values())
    warnings += [f"INFO keyspace is unavailable on {name}: other databases were not checked" for name in unavailable]
    if other_dbs:
        listing = ", ".join(f"db{n}: {count} keys" for n, count in sorted(other_dbs.items()))
        blockers.append(_blocker(
            f"the source has data outside db{db}, which is the only one migrated ({listing})",
            "ElastiCache Serverless has only db 0: migrate each database in its own run into its own cache "
            f"(--db N or the source URL's /N), or move the keys into db{db}, or flush those databases if unused; "
            "dump and run refuse this unless --ignore-other-dbs"))
    if not total:
        blockers.append(_blocker(
            f"the source holds no keys in db{db}: there is nothing to migrate",
            "check the URL and db (a wrong host, port or database?), and whether the source Redis was just "
            "restarted without its data; dump and run refuse an empty source unless --allow-empty-source"))
    sampled_bytes = _extrapolate(sampled, total, lambda k: k.size)
    memory_bytes = _data_in_memory(memory, total, sum(other_dbs.values()))
    return {
        **_side(source), "rdb_version": rdb, "db": db, "keys": total, "keys_per_master": keys_per_master,
        "used_memory": memory and memory["used_memory"],
        "data_bytes": max(sampled_bytes, memory_bytes or 0),
        "data_bytes_sampled": sampled_bytes, "data_bytes_memory": memory_bytes,
        "ecpu_to_write": _extrapolate(sampled, total, lambda k: max(1, math.ceil(k.size / ECPU_BYTES))),
        "sample": {
            "keys": len(sampled), "size_method": method,
            "types": dict(Counter(k.type for k in sampled).most_common()),
            "ttl_share": round(sum(k.has_ttl for k in sampled) / len(sampled), 4) if sampled else 0.0,
            "largest": [{"key": readable(k.key), "type": k.type, "bytes": k.size}
                        for k in sorted(sampled, key=lambda k: k.size, reverse=True)[:LARGEST_SHOWN]],
        },
    }


def _extrapolate(sampled: list[SampledKey], total: int, measure) -> int:
    """The sample's mean, scaled to every key."""
    return round(sum(measure(k) for k in sampled) / len(sampled) * total) if sampled else 0


def _memory(topology: Topology) -> dict[str, int] | None:
    """INFO memory summed over the masters, or None where a server does not report it (serverless)."""
    total: Counter = Counter()
    for node in topology.masters:
        try:
            info = topology.client(node).info("memory")
            total.update({name: int(info[name])
                          for name in ("used_memory", "used_memory_startup", "used_memory_dataset") if name in info})
        except (redis.ResponseError, ValueError):
            return None
        if "used_memory" not in info:
            return None
    return dict(total)


def _data_in_memory(memory: dict[str, int] | None, keys: int, other_keys: int) -> int | None:
    """What the data takes in the source's memory: used_memory less what the server used empty at start
    (else used_memory_dataset). Other databases share that memory: they are taken out by their share of
    the keys. A sample can miss the few huge keys that hold most of the bytes; this figure cannot."""
    if not memory:
        return None
    if "used_memory_startup" in memory:
        data = memory["used_memory"] - memory["used_memory_startup"]
    elif "used_memory_dataset" in memory:
        data = memory["used_memory_dataset"]
    else:
        return None
    return round(max(data, 0) * keys / (keys + other_keys)) if keys else 0


def sample_keys(topology: Topology, limit: int, db: int = 0) -> tuple[list[SampledKey], str]:
    """Up to about `limit` keys drawn at random over the whole keyspace (RANDOMKEY), shared between the
    masters by their key counts, with type, TTL and size (MEMORY USAGE, else an estimate). The first keys
    a SCAN returns are no sample: their sizes can be anything but typical. A master with no more keys than
    its share is read whole."""
    clients = [topology.client(node, db) for node in topology.masters]
    sizes = [client.dbsize() for client in clients]
    total = sum(sizes)
    sampled: list[SampledKey] = []
    method = "memory-usage"
    for node, client, size in zip(topology.masters, clients, sizes):
        share = min(size, -(-limit * size // total)) if total else 0
        keys = _scan_all(client) if share >= size else _random_keys(client, share)
        if keys and method == "memory-usage" and not _memory_usage_works(client, keys[0]):
            method = "estimate"
        sampled += _describe(client, node, keys, method)
    return sampled, method


def _scan_all(client: redis.Redis) -> list[bytes]:
    return list(dict.fromkeys(client.scan_iter(count=1000)))  # SCAN may repeat a key


def _random_keys(client: redis.Redis, count: int, batch: int = 1000) -> list[bytes]:
    """`count` distinct keys from RANDOMKEY, pipelined (a key drawn twice counts once; at most 3x the draws)."""
    keys: dict[bytes, None] = {}
    draws = 0
    try:
        while len(keys) < count and draws < 3 * count:
            pipe = client.pipeline(transaction=False)
            for _ in range(min(batch, count - len(keys))):
                pipe.randomkey()
            replies = pipe.execute()
            draws += len(replies)
            keys.update(dict.fromkeys(key for key in replies if key is not None))
    except redis.ResponseError:  # RANDOMKEY refused: the first scanned keys are all there is to go on
        return list(itertools.islice(dict.fromkeys(client.scan_iter(count=1000)), count))
    return list(keys)


def _memory_usage_works(client: redis.Redis, key: bytes) -> bool:
    """MEMORY is refused on ElastiCache Serverless (and renamed away on restricted test nodes)."""
    try:
        client.memory_usage(key)
        return True
    except redis.ResponseError:
        return False


def _describe(client: redis.Redis, node: Node, keys: list[bytes], method: str) -> list[SampledKey]:
    """TYPE and PTTL for each key in one pipeline, then the size in a second one."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
        pipe.pttl(key)
    replies = pipe.execute()
    kinds = [r.decode() if isinstance(r, bytes) else str(r) for r in replies[0::2]]
    ttls = replies[1::2]
    pipe = client.pipeline(transaction=False)
    for key, kind in zip(keys, kinds):
        if method == "memory-usage":
            pipe.memory_usage(key)
        else:
            pipe.execute_command(LENGTH_COMMANDS.get(kind, b"EXISTS").decode(), key)
    sizes = pipe.execute(raise_on_error=False)
    result = []
    for key, kind, ttl, size in zip(keys, kinds, ttls, sizes):
        if kind == "none" or isinstance(size, Exception):  # gone since the scan
            continue
        if method != "memory-usage":
            size = estimated_size(key, kind, size)
        result.append(SampledKey(key, node, kind, ttl >= 0, int(size or 0)))
    return result


def _source_rdb_version(source: Topology, sampled: list[SampledKey], db: int) -> int | None:
    """The RDB version in the source's DUMP payloads, from the smallest sampled key (never writes to the source)."""
    for key in sorted(sampled, key=lambda k: k.size)[:5]:
        payload = source.client(key.node, db).dump(key.key)
        if payload:
            return rdb_version_of(payload)
    return None


def _replay_mode(source_rdb: int | None, target_rdb: int) -> dict:
    if source_rdb is None or target_rdb >= source_rdb:
        return {"mode": "restore",
                "why": f"target RDB {target_rdb} >= source RDB {source_rdb}: DUMP payloads RESTORE as they are"}
    return {"mode": "struct", "why": f"target RDB {target_rdb} < source RDB {source_rdb}: RESTORE would refuse the "
                                     "payloads, so replay writes each key type by type (slower)"}


# --- engines, and the path each type takes ------------------------------------------------------------

STANDARD_TYPES = ("string", "list", "set", "zset", "hash", "stream")
FIELD_TTL_HASHES = "hash with field TTLs"
# INFO keyspace's count of keys with expiring members: Valkey 9 and Redis 7.4+ name it differently
FIELD_TTL_INFO_NAMES = ("keys_with_volatile_items", "subexpiry")


def _rdb_or_expected(source: Topology, dumped: int | None) -> dict:
    """The source's RDB version as a DUMP showed it, else as its engine's release writes it (nothing to DUMP)."""
    if dumped is not None:
        return {"rdb_version": dumped, "rdb_version_from": "dump"}
    return {"rdb_version": source.expected_rdb_version, "rdb_version_from": "engine version"}


def _keys_with_field_ttls(source: Topology, db: int) -> int | None:
    """Hashes with fields that expire on their own, from INFO keyspace; None where the engine has none."""
    if not source.has_hash_field_ttl:
        return None
    total = 0
    with translated_errors(source.endpoint):
        for node in source.masters:
            try:
                stats = source.client(node).info("keyspace").get(f"db{db}", {})
            except redis.ResponseError:
                return None
            total += next((int(stats[name]) for name in FIELD_TTL_INFO_NAMES if name in stats), 0)
    return total


def type_paths(source: Topology, target: Topology, src: dict, target_rdb: int) -> dict[str, dict]:
    """For each type: RESTORE of its DUMP payload, type-by-type writes, or skipped (named and counted), and why.
    Module types (seen in the sample) have no type-by-type writer; hash field TTLs need HEXPIRE on the target."""
    source_rdb = src["rdb_version"]
    restore = source_rdb is None or target_rdb >= source_rdb
    if restore:
        standard = {"path": "restore", "why": f"the target (RDB {target_rdb}) RESTOREs RDB {source_rdb} payloads; "
                                              "keys over --max-payload go type by type"}
    else:
        standard = {"path": "type-by-type", "why": f"the target (RDB {target_rdb}) refuses RDB {source_rdb} payloads"}
    paths = {kind: dict(standard) for kind in STANDARD_TYPES}
    if not restore:
        paths["stream"]["why"] += _stream_note(source, target)
    for kind in src["sample"]["types"]:
        if kind not in STANDARD_TYPES:
            paths[kind] = ({"path": "restore", "why": "a module type: RESTOREd where the target has the same module, "
                                                      "else skipped, named and counted"} if restore else
                           {"path": "skipped", "why": "a module type has no type-by-type writer: skipped, named and "
                                                      "counted"})
    if source.has_hash_field_ttl:
        paths[FIELD_TTL_HASHES] = {**_field_ttl_path(target, restore, standard), "keys": src["hash_field_ttl_keys"]}
    return paths


def _stream_note(source: Topology, target: Topology) -> str:
    """What the type-by-type path carries of a stream, and what this target cannot hold."""
    note = "; whole: entries, last ID, groups, consumers, pending entries"
    if not source.has_stream_counters:
        return note
    if target.has_stream_counters:
        return note + ", entries-added and entries-read"
    return note + (f"; {target.engine} {target.version} cannot hold entries-added, max-deleted ID or entries-read: "
                   "such streams are named in the summary (not_held)")


def _field_ttl_path(target: Topology, restore: bool, standard: dict) -> dict:
    if not target.has_hash_field_ttl:
        return {"path": "skipped", "why": f"{target.engine} {target.version} has no hash field TTLs (HEXPIRE): such "
                                          "keys are skipped, named and counted, never copied without their fields' "
                                          "expiries"}
    if restore:
        return dict(standard)
    return {**standard, "why": standard["why"] + "; the fields' expiries with HPEXPIREAT"}


# --- the serverless cache and SSM ---------------------------------------------------------------------

def _cache_section(clients: Clients, name: str, src: dict, target: Topology, headroom: float,
                   blockers: list[dict], warnings: list[str]) -> dict:
    """Storage fit with headroom, replay time and cost at the ECPU limits, and the endpoint to use as target."""
    cache = describe_serverless_cache(clients, name)
    section = cache.describe()
    if cache.status != "available":
        blockers.append(_blocker(f"serverless cache {name} is {cache.status}", "wait until it is available"))
    needed = src["data_bytes"] * headroom
    section["storage_needed_bytes"] = round(needed)
    if cache.storage_max_gb is not None and needed > cache.storage_max_gb * GB:
        blockers.append(_blocker(
            f"serverless cache {name} stores at most {cache.storage_max_gb} GB, but the source data "
            f"(~{src['data_bytes'] / GB:.2f} GB) with x{headroom} headroom needs {needed / GB:.2f} GB; "
            "at the maximum it evicts keys, then refuses writes",
            f"raise CacheUsageLimits DataStorage Maximum to at least {math.ceil(needed / GB)} GB "
            f"(aws elasticache modify-serverless-cache --serverless-cache-name {name} --cache-usage-limits ...)"))
    ecpu = src["ecpu_to_write"]
    section["replay_ecpu"] = ecpu
    section["replay_ecpu_cost_usd"] = round(ecpu / 1e6 * ECPU_PRICE_PER_MILLION, 6)
    section["storage_cost_usd_per_month"] = round(src["data_bytes"] / GB * STORAGE_PRICE_GB_MONTH, 4)
    section["replay_seconds_at_ecpu_max"] = round(ecpu / cache.ecpu_max, 1) if cache.ecpu_max else None
    section["advice"] = (f"about an hour before the replay, raise ECPUPerSecond Minimum (now {cache.ecpu_min}) "
                         "to the rate "
                         f"replay should run at (at most the Maximum, {cache.ecpu_max}) so the cache has scaled out "
                         "before the load; lower it again afterwards")
    target_at = (target.masters[0].host, target.masters[0].port) if len(target.masters) == 1 else None
    if cache.host and target_at != (cache.host, cache.port):
        warnings.append(f"--target is not the endpoint of serverless cache {name} ({cache.host}:{cache.port})")
    return section


def _ssm_section(clients: Clients, names: dict[str, str], source: Topology, target: Topology,
                 blockers: list[dict], warnings: list[str]) -> dict:
    """The parameters cutover will repoint: their values now, and whether they exist at all."""
    section = {}
    for _key, name in names.items():
        history = parameter_history(clients.ssm, name)
        if history is None:
            section[name] = {"exists": False}
            blockers.append(_blocker(f"SSM parameter {name} does not exist, so cutover has nothing to repoint",
                                     "check --env/--param-prefix, or create it with the value the apps use now"))
            continue
        section[name] = {"exists": True, "value": history.current.value, "version": history.current.number,
                         "earlier_cutover_labels": bool(history.labelled(LABEL_BEFORE)
                                                        or history.labelled(LABEL_AFTER))}
    endpoint = section[names["endpoint"]].get("value")
    if endpoint is not None and endpoint not in {n.host for n in source.masters + target.masters}:
        warnings.append(f"{names['endpoint']} is {endpoint}, which is neither the source's nor the target's host "
                        "as given here (fine if those are different names for the same servers)")
    return section
