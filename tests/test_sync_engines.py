"""`redis-migrate sync` across engines, with the app writing the whole time: a Redis 6.2 source (no PEXPIRETIME,
RDB 9) into the serverless-like Redis 7.0 node, and a Valkey 9.1 source (RDB 80, so every key takes the
type-by-type path) into the Valkey 8.1 serverless-like node behind its TLS front. Same ending as
tests/test_sync.py: SIGTERM, exit 0, target == source by the independent snapshot, no acknowledged write lost."""

from __future__ import annotations

import pytest

import bench
from appwriter import missing_witnesses
from snapshot import assert_same, assert_same_groups, snapshot, stream_groups
from test_sync import assert_exact, finish, follow_for, print_figures, started_sync, sync_processes  # noqa: F401


@pytest.fixture
def quiet(request):
    """Notifications off again after the test (the servers are shared by the session)."""
    servers = []
    yield servers.append
    for server in servers:
        if server.process.poll() is None:
            server.client().config_set("notify-keyspace-events", "")


def sync_with_the_app(source, target, run_dir, tmp_path, started, name: str):
    bench.seed(source, 3000)  # plain types only: Redis 6.2 refuses the seed's `ms-*` stream IDs
    sync, writer = started_sync(started, tmp_path, run_dir, source.url(), target.url(), "--enable-notifications")
    follow_for(sync, writer, 1.5)
    records, final = finish(sync, writer)
    print_figures(name, records, final)
    return records


def test_from_a_redis_6_2_source(old_source, serverless_target, run_dir, tmp_path, sync_processes, quiet):
    quiet(old_source)
    records = sync_with_the_app(old_source, serverless_target, run_dir, tmp_path, sync_processes, "Redis 6.2 source")
    assert_exact(old_source, serverless_target, records)


def test_from_valkey_9_into_valkey_8(valkey_source, valkey_target, run_dir, tmp_path, sync_processes, quiet):
    quiet(valkey_source)
    records = sync_with_the_app(valkey_source, valkey_target, run_dir, tmp_path, sync_processes,
                                "Valkey 9.1 source into Valkey 8.1")
    assert_same(snapshot(valkey_source), snapshot(valkey_target), ttl_tolerance_ms=1000)
    assert missing_witnesses(records, valkey_target) == []
    assert_same_groups(stream_groups(valkey_source), stream_groups(valkey_target))
