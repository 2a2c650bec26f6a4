"""The test bed itself: every topology is what it claims to be."""

from __future__ import annotations

import boto3
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def covered_slots(node_client: redis.Redis) -> int:
    return sum(int(end) - int(start) + 1 for start, end, *_ in node_client.execute_command("CLUSTER SLOTS"))


def test_standalone_source_requires_password_and_has_16_databases(standalone_source):
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=standalone_source.port).ping()
    standalone_source.client(db=15).set("k", "v")
    assert standalone_source.client(db=15).get("k") == b"v"
    with pytest.raises(redis.ResponseError):
        standalone_source.client(db=16).ping()


def test_serverless_target_refuses_restricted_commands(serverless_target):
    client = serverless_target.first.client()
    for command in ("CONFIG GET maxmemory", "KEYS *", "DEBUG SLEEP 0", "MEMORY USAGE x", "OBJECT ENCODING x"):
        with pytest.raises(redis.ResponseError, match="unknown command"):
            client.execute_command(command)


def test_serverless_target_speaks_dump_restore_over_tls_only(serverless_target):
    client = serverless_target.first.client()
    client.set("greeting", "hello", px=60_000)
    payload = client.dump("greeting")
    client.restore("copy", 0, payload)
    assert client.get("copy") == b"hello"
    plain = redis.Redis(host="127.0.0.1", port=serverless_target.first.port, password=serverless_target.password,
                        socket_timeout=2, socket_connect_timeout=2)
    with pytest.raises(redis.ConnectionError):
        plain.ping()


@pytest.mark.parametrize("name", ["cluster_source", "cluster_target", "serverless_target"])
def test_clusters_cover_all_slots(name, request):
    cluster = request.getfixturevalue(name)
    assert covered_slots(cluster.first.client()) == 16384
    assert len(cluster.first.client().execute_command("CLUSTER SLOTS")) == len(cluster.nodes)


def test_cluster_target_is_tls_with_three_masters(cluster_target):
    assert len(cluster_target.nodes) == 3
    client = cluster_target.cluster_client()
    for index in range(100):
        client.set(f"key:{index}", index)
    assert sum(node.client().dbsize() for node in cluster_target.nodes) == 100
    assert all(node.client().dbsize() > 0 for node in cluster_target.nodes)


def test_old_target_refuses_a_payload_from_the_70_source(standalone_source, old_target):
    source = standalone_source.client()
    source.set("k", "v")
    payload = source.dump("k")
    assert int.from_bytes(payload[-10:-8], "little") == 10
    old = old_target.first.client()
    assert old.execute_command("HELLO", 2)[3] == b"6.2.5"
    with pytest.raises(redis.ResponseError, match="DUMP payload version or checksum are wrong"):
        old.restore("k", 0, payload)
    old.set("old", "v")
    assert int.from_bytes(old.dump("old")[-10:-8], "little") == 9


def test_moto_answers_ssm_put_and_history(aws):
    ssm = boto3.client("ssm")
    ssm.put_parameter(Name="/storefront/test/redis/endpoint", Value="old.example", Type="String")
    ssm.put_parameter(Name="/storefront/test/redis/endpoint", Value="new.example", Type="String", Overwrite=True)
    history = ssm.get_parameter_history(Name="/storefront/test/redis/endpoint")["Parameters"]
    assert [(p["Version"], p["Value"]) for p in history] == [(1, "old.example"), (2, "new.example")]
    assert ssm.get_parameter(Name="/storefront/test/redis/endpoint:1")["Parameter"]["Value"] == "old.example"


# --- Valkey ------------------------------------------------------------------------------------------

NO_RETRY = Retry(NoBackoff(), 0)  # a refusal is the answer: redis-py's default retries only slow it down


def server_facts(client: redis.Redis) -> tuple[str, str]:
    info = client.info("server")
    return info.get("server_name", "redis"), info.get("valkey_version", info["redis_version"])


def test_valkey_servers_from_pypi_start_and_are_the_versions_named(valkey_source, valkey_target):
    assert server_facts(valkey_source.client()) == ("valkey", valkey_source.client().info("server")["valkey_version"])
    assert server_facts(valkey_source.client())[1].startswith("9.1.")
    assert server_facts(valkey_target.first.client())[1].startswith("8.1.")
    source, target = valkey_source.client(), valkey_target.first.client()
    source.set("k", "v")
    target.set("k", "v")
    assert int.from_bytes(source.dump("k")[-10:-8], "little") == 80
    assert int.from_bytes(target.dump("k")[-10:-8], "little") == 11


def test_valkey_target_is_tls_only_and_announces_its_tls_front(valkey_target):
    node = valkey_target.first
    slots = node.client().execute_command("CLUSTER SLOTS")
    assert [(int(s[0]), int(s[1]), int(s[2][1])) for s in slots] == [(0, 16383, node.port)]
    plain = redis.Redis(host="127.0.0.1", port=node.port, password=valkey_target.password, socket_timeout=1,
                        socket_connect_timeout=1, retry=NO_RETRY)
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    for command in ("CONFIG GET maxmemory", "KEYS *", "OBJECT ENCODING x", "MEMORY USAGE x"):
        with pytest.raises(redis.ResponseError, match="unknown command"):
            node.client().execute_command(command)
    client = valkey_target.cluster_client()
    for index in range(50):
        client.set(f"key:{index}", index)
    assert node.client().dbsize() == 50


def test_valkey_source_requires_password_and_has_16_databases(valkey_source):
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=valkey_source.port, retry=NO_RETRY).ping()
    valkey_source.client(db=15).set("k", "v")
    assert valkey_source.client(db=15).get("k") == b"v"


def test_valkey_cluster_source_selects_databases_in_cluster_mode(valkey_cluster_source):
    node = valkey_cluster_source.first
    assert node.client().cluster("INFO")["cluster_state"] == "ok"
    node.client(db=3).set("k", "v")
    assert node.client(db=3).get("k") == b"v" and node.client().dbsize() == 0


def test_old_source_is_redis_62(old_source):
    client = old_source.client()
    assert client.info("server")["redis_version"].startswith("6.2.")
    client.set("k", "v")
    assert int.from_bytes(client.dump("k")[-10:-8], "little") == 9
