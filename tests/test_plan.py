"""plan against real Redis topologies (and a stubbed serverless cache, and moto's SSM)."""

from __future__ import annotations

from aws_helpers import as_json, aws_calls, cache_response, invoke, own_client, stubbed_elasticache  # noqa: F401
from migrate.cloud.aws import Clients

CACHE = "storefront-test"


def seed_small(client) -> None:
    """Two keys of every common type, half with a TTL, and one clearly largest key."""
    client.set("user:1", "ana", px=600_000)
    client.set("user:2", "bo")
    client.hset("cart:{1}", mapping={f"sku{i}": i for i in range(20)})
    client.hset("cart:{2}", mapping={"sku": 1})
    client.expire("cart:{2}", 600)
    client.rpush("feed:{1}", *range(10))
    client.sadd("tags:{1}", "a", "b", "c")
    client.zadd("rank:{1}", {"x": 1.5, "y": 2})
    client.xadd("events:{1}", {"kind": "order.created"})
    client.set("blob:big", b"x" * 200_000)


def plan(source, target, *extra, code=0, obj=None) -> dict:
    return as_json(invoke("plan", "--source", source, "--target", target, *extra, "--json", obj=obj, code=code))


def test_standalone_into_serverless_is_go(standalone_source, serverless_target):
    seed_small(standalone_source.client())
    out = plan(standalone_source.url(), serverless_target.url())
    assert out["verdict"] == "go" and out["blockers"] == []
    src, tgt = out["source"], out["target"]
    assert (src["kind"], src["keys"], src["rdb_version"], src["auth"], src["tls"]) == ("standalone", 9, 10, True, False)
    assert (tgt["kind"], tgt["keys"], tgt["rdb_version"], tgt["tls"]) == ("cluster", 0, 10, True)
    assert list(tgt["masters"].values()) == [16384]
    assert out["replay"]["mode"] == "restore"
    sample = src["sample"]
    assert sample["size_method"] == "memory-usage" and sample["keys"] == 9
    assert sample["types"] == {"string": 3, "hash": 2, "list": 1, "set": 1, "zset": 1, "stream": 1}
    assert sample["ttl_share"] == round(2 / 9, 4)
    assert sample["largest"][0]["key"] == "blob:big" and sample["largest"][0]["bytes"] >= 200_000
    assert src["data_bytes"] >= 200_000 and src["used_memory"] > src["data_bytes"]
    assert serverless_target.first.client().dbsize() == 0  # the RDB probe left nothing behind


def test_cluster_into_cluster_counts_every_master(cluster_source, cluster_target):
    client = cluster_source.cluster_client()
    for index in range(300):
        client.set(f"key:{index}", index)
    out = plan(cluster_source.url(), cluster_target.url())
    assert out["verdict"] == "go"
    assert out["source"]["keys"] == 300 and len(out["source"]["keys_per_master"]) == 3
    assert all(count > 0 for count in out["source"]["keys_per_master"].values())
    assert sorted(out["source"]["masters"].values()) == [5461, 5461, 5462]
    assert out["source"]["sample"]["keys"] == 300 and out["source"]["sample"]["types"] == {"string": 300}


def test_sample_is_bounded_and_spread_over_masters(cluster_source, serverless_target):
    client = cluster_source.cluster_client()
    for index in range(3000):
        client.set(f"key:{index}", index)
    out = plan(cluster_source.url(), serverless_target.url(), "--sample", "300")
    assert 300 <= out["source"]["sample"]["keys"] < 400
    assert out["source"]["keys"] == 3000
    assert out["source"]["data_bytes"] > 0


def test_older_target_means_struct_replay(standalone_source, old_target):
    standalone_source.client().set("k", "v")
    out = plan(standalone_source.url(), old_target.url())
    assert (out["source"]["rdb_version"], out["target"]["rdb_version"]) == (10, 9)
    assert out["replay"]["mode"] == "struct" and out["verdict"] == "go"


def test_restricted_source_is_sized_by_estimate(old_target, serverless_target):
    old_target.first.client().set("s", "x" * 1000)
    old_target.first.client().rpush("l", *range(100))
    out = plan(old_target.url(), serverless_target.url())
    sample = out["source"]["sample"]
    assert sample["size_method"] == "estimate"
    assert {k["key"]: k["bytes"] for k in sample["largest"]} == {"l": 1 + 50 + 100 * 64, "s": 1 + 50 + 1000}
    assert out["replay"]["mode"] == "restore"


def test_data_in_another_database_is_a_blocker(standalone_source, serverless_target):
    standalone_source.client().set("k", "v")
    standalone_source.client(db=3).set("legacy", "v")
    result = invoke("plan", "--source", standalone_source.url(), "--target", serverless_target.url(), code=1)
    assert "BLOCKED" in result.stdout and "db3: 1 keys" in result.stdout and "fix:" in result.stdout


def test_nonempty_target_is_a_blocker(standalone_source, serverless_target):
    standalone_source.client().set("k", "v")
    serverless_target.first.client().set("leftover", "v")
    out = plan(standalone_source.url(), serverless_target.url(), code=1)
    assert out["target"]["keys"] == 1
    assert [b for b in out["blockers"] if "--allow-nonempty-target" in b["fix"]]


def test_bad_url_is_bad_input(serverless_target):
    invoke("plan", "--source", "http://nope", "--target", serverless_target.url(), code=2)


def test_serverless_cache_limits_cost_and_ssm(aws, aws_calls, standalone_source, serverless_target):
    seed_small(standalone_source.client())
    ssm = own_client("ssm")
    ssm.put_parameter(Name="/storefront/test/redis/endpoint", Value="127.0.0.1", Type="String")
    port = serverless_target.first.port
    cache = stubbed_elasticache(cache_response(CACHE, "127.0.0.1", port, storage_gb=1, ecpu_max=3000), CACHE, times=2)
    args = ("--serverless-cache", CACHE, "--env", "test")
    out = plan(standalone_source.url(), serverless_target.url(), *args, code=1, obj=Clients(elasticache=cache))
    section = out["serverless_cache"]
    assert section["endpoint"] == f"127.0.0.1:{port}" and section["storage_max_gb"] == 1
    assert section["replay_ecpu"] >= 200 and section["replay_ecpu_cost_usd"] > 0
    assert section["replay_seconds_at_ecpu_max"] == round(section["replay_ecpu"] / 3000, 1)
    assert "an hour before" in section["advice"]
    assert out["ssm"]["/storefront/test/redis/endpoint"]["value"] == "127.0.0.1"
    assert out["ssm"]["/storefront/test/redis/port"] == {"exists": False}
    assert [b["problem"] for b in out["blockers"]] == [
        "SSM parameter /storefront/test/redis/port does not exist, so cutover has nothing to repoint"]
    assert out["warnings"] == []
    ssm.put_parameter(Name="/storefront/test/redis/port", Value=str(port), Type="String")
    text = invoke("plan", "--source", standalone_source.url(), "--target", serverless_target.url(), *args,
                  obj=Clients(elasticache=cache)).stdout
    assert "plan: GO" in text and f"endpoint 127.0.0.1:{port}" in text


def test_serverless_cache_too_small_is_a_blocker(aws, aws_calls, standalone_source, serverless_target):
    client = standalone_source.client()
    try:
        for key in ("blob:1", "blob:2"):  # 720 MB in all: x1.5 headroom needs more than the cache's 1 GB
            client.setrange(key, 360_000_000 - 1, "x")
        client.set("small", "v")
        response = cache_response(CACHE, "127.0.0.1", serverless_target.first.port, storage_gb=1)
        cache = stubbed_elasticache(response, CACHE)
        out = plan(standalone_source.url(), serverless_target.url(), "--serverless-cache", CACHE, code=1,
                   obj=Clients(elasticache=cache))
    finally:
        client.flushall()
    assert out["serverless_cache"]["storage_needed_bytes"] > 10**9
    assert any("stores at most 1 GB" in b["problem"] and "DataStorage Maximum" in b["fix"] for b in out["blockers"])
