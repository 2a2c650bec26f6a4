"""retire-check against a real old Redis and moto's SSM and S3: GO only when it is truly unused."""

from __future__ import annotations

import threading

import pytest
import redis

from aws_helpers import as_json, invoke, own_client

ENDPOINT = "/storefront/prod/redis/endpoint"
NEW_HOST = "storefront-prod-abc123.serverless.use1.cache.amazonaws.com"
BUCKET = "redis-archive-retire"


@pytest.fixture
def old_redis(standalone_source, aws):
    """The old Redis, with nobody connected; SSM moved from it to the cache."""
    ssm = own_client("ssm")
    ssm.put_parameter(Name=ENDPOINT, Value="127.0.0.1", Type="String")
    ssm.put_parameter(Name=ENDPOINT, Value=NEW_HOST, Overwrite=True)
    kill_clients(standalone_source)
    return standalone_source


def connect(server, name: str) -> redis.Redis:
    return server.client(client_name=name)


def kill_clients(server) -> None:
    """Close the test bed's own pooled connections, which would look like an app's."""
    client = connect(server, "redis-migrate-test")
    client.client_kill_filter(_type="normal", skipme=True)
    client.close()


def check(server, *extra, code):
    result = invoke("retire-check", "--env", "prod", "--source", server.url(), "--watch", "2s", "--json", *extra,
                    code=code)
    return as_json(result)


def by_name(result: dict) -> dict[str, dict]:
    return {c["check"]: c for c in result["checks"]}


def test_go_when_idle_with_the_archive_verified_and_expiries_not_counted(old_redis, run_dir, aws):
    client = old_redis.client()
    client.mset({f"k:{i}": i for i in range(100)})
    invoke("dump", "--source", old_redis.url(), "--run-dir", run_dir)
    s3 = own_client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_public_access_block(Bucket=BUCKET, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    invoke("archive", "--run-dir", run_dir, "--to", f"s3://{BUCKET}/prod")
    for i in range(50):
        client.set(f"short:{i}", "x", px=200)  # they expire during the window: not writes
    kill_clients(old_redis)

    result = check(old_redis, "--min-age", "0", "--run-dir", run_dir, "--archive", f"s3://{BUCKET}/prod", code=0)
    assert result["verdict"] == "GO"
    assert all(c["result"] == "ok" for c in result["checks"]), result
    assert "Scale the old Fargate Redis service" in result["next_step"] and "task definition" in result["next_step"]
    assert old_redis.client().dbsize() == 100  # short:* expired, nothing deleted by the check

    text = invoke("retire-check", "--env", "prod", "--source", old_redis.url(), "--watch", "1s", "--min-age", "0",
                  "--old-kind", "elasticache").output
    assert "GO" in text and "FinalSnapshotIdentifier".lower() in text.replace("-", "").lower()


def test_no_go_while_an_app_client_is_connected(old_redis):
    app = connect(old_redis, "storefront-web")
    app.ping()
    try:
        result = check(old_redis, "--min-age", "0", code=1)
    finally:
        app.close()
    assert result["verdict"] == "NO-GO"
    assert by_name(result)["no other client"]["result"] == "NO-GO"
    assert "storefront-web" in by_name(result)["no other client"]["evidence"]
    assert "Do not remove" in result["next_step"]


def test_no_go_when_something_writes_during_the_window(old_redis):
    stop = threading.Event()
    # named like this toolkit's own connections, so only the write counters can catch it
    writer = connect(old_redis, "redis-migrate-cron")

    def cron() -> None:
        while not stop.wait(0.1):
            writer.incr("cron:counter")

    thread = threading.Thread(target=cron)
    thread.start()
    try:
        result = check(old_redis, "--min-age", "0", code=1)
    finally:
        stop.set()
        thread.join()
        writer.close()
    assert by_name(result)["no other client"]["result"] == "ok"
    assert by_name(result)["no writes"]["result"] == "NO-GO"
    assert "incr" in by_name(result)["no writes"]["evidence"]


def test_no_go_when_ssm_changed_less_than_min_age_ago(old_redis):
    result = check(old_redis, "--min-age", "24h", code=1)
    ssm = by_name(result)["SSM points away"]
    assert ssm["result"] == "NO-GO" and "--min-age" in ssm["evidence"] and NEW_HOST in ssm["evidence"]
    own_client("ssm").put_parameter(Name=ENDPOINT, Value="127.0.0.1", Overwrite=True)  # rolled back
    back = check(old_redis, "--min-age", "0", code=1)
    assert "still names the old Redis" in by_name(back)["SSM points away"]["evidence"]


def test_bad_durations_are_bad_input(old_redis):
    out = invoke("retire-check", "--env", "prod", "--source", old_redis.url(), "--watch", "soon", code=2).output
    assert "--watch" in out


def test_every_primary_of_a_cluster_is_watched(cluster_source, aws):
    ssm = own_client("ssm")
    ssm.put_parameter(Name=ENDPOINT, Value="127.0.0.1", Type="String")
    ssm.put_parameter(Name=ENDPOINT, Value=NEW_HOST, Overwrite=True)
    for node in cluster_source.nodes:
        kill_clients(node)
    last = cluster_source.nodes[-1]
    app = connect(last, "storefront-worker")
    app.ping()
    try:
        result = check(cluster_source, "--min-age", "0", code=1)
    finally:
        app.close()
    clients = by_name(result)["no other client"]
    assert clients["result"] == "NO-GO" and f":{last.port}" in clients["evidence"], clients
