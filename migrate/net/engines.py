"""What a server's engine and version say it can hold: its RDB version, hash field TTLs, databases in a cluster.

ElastiCache runs Redis OSS and Valkey, and AWS applies minor upgrades on its own, so these facts are derived
from the engine and version that every run reads (HELLO, or INFO server's `server_name` and `valkey_version`
where HELLO is refused), never configured. A Valkey server reports `redis_version:7.2.4` for compatibility:
its own version is `valkey_version`. The RDB version measured by a DUMP outranks the table here; the table
answers where there is nothing to DUMP (an empty source).
"""

from __future__ import annotations

# engine -> (first release, RDB version its DUMP payloads carry), newest first
_RDB_BY_ENGINE = {
    "redis": [((8, 6), 13), ((7, 4), 12), ((7, 2), 11), ((7, 0), 10), ((5, 0), 9)],
    "valkey": [((9, 0), 80), ((7, 2), 11)],
}
_HASH_FIELD_TTL_SINCE = {"redis": (7, 4), "valkey": (9, 0)}  # HEXPIRE and friends
_STREAM_COUNTERS_SINCE = {"redis": (7, 0), "valkey": (7, 2)}  # entries-read, entries-added, max-deleted ID
_CLUSTER_DATABASES_SINCE = {"valkey": (9, 0)}  # SELECT in cluster mode (cluster-databases)
DISPLAY_NAMES = {"redis": "Redis", "valkey": "Valkey"}


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


def engine_from_info(info: dict) -> tuple[str, str]:
    """(engine, version) from INFO server: Valkey names itself in `server_name` and keeps its own version in
    `valkey_version` (its `redis_version` is a fixed 7.2.4)."""
    engine = str(info.get("server_name") or "redis").lower()
    version = info.get("valkey_version") if engine == "valkey" else None
    return engine, str(version or info.get("redis_version", "0"))


def display_name(engine: str) -> str:
    return DISPLAY_NAMES.get(engine, engine)


def expected_rdb_version(engine: str, version: str) -> int | None:
    """The RDB version this engine's release writes, or None for an engine or release the table does not know."""
    release = version_tuple(version)
    for since, rdb in _RDB_BY_ENGINE.get(engine, []):
        if release >= since:
            return rdb
    return None


def has_hash_field_ttl(engine: str, version: str) -> bool:
    """Whether hash fields can carry their own TTLs (HEXPIRE): Redis 7.4+, Valkey 9.0+."""
    since = _HASH_FIELD_TTL_SINCE.get(engine)
    return since is not None and version_tuple(version) >= since


def has_cluster_databases(engine: str, version: str) -> bool:
    """Whether a cluster node can hold keys outside db 0 (Valkey 9.0+ with cluster-databases > 1)."""
    since = _CLUSTER_DATABASES_SINCE.get(engine)
    return since is not None and version_tuple(version) >= since


def has_stream_counters(engine: str, version: str) -> bool:
    """Whether streams keep entries-added, max-deleted ID and groups' entries-read (XSETID ENTRIESADDED,
    XGROUP ... ENTRIESREAD): Redis 7.0+, every Valkey."""
    since = _STREAM_COUNTERS_SINCE.get(engine)
    return since is not None and version_tuple(version) >= since
