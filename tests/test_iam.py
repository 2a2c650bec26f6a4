"""IAM authentication through a local stand-in for ElastiCache's IAM check (tests/iamproxy.py).

Both sides sit behind their own proxy, on plain TCP, in front of password-protected standalone servers:
the source as a node-based replication group (no ResourceType), the target as a serverless cache. The
tool only knows the user names and the AWS credentials (from the standard variables): every connection
it opens must AUTH with a token the proxy verifies, and the proxy alone knows the backends' passwords.
(The TLS front of the serverless-like target is left out: TLS and IAM are independent layers, and the
cluster-mode target would announce its own port in CLUSTER SLOTS, bypassing the proxy.)
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import seed_data
import testbed
from conftest import SOURCE_PASSWORD, TARGET_PASSWORD
from iamproxy import IamProxy
from migrate.net import iam
from migrate.net.endpoints import Endpoint
from migrate.net.wire import Renewing, Wire, pack
from migrate.redact import scrub
from reliability import assert_clean_error, invoke
from snapshot import assert_same, snapshot

ACCESS_KEY, SECRET_KEY, REGION = "AKIAIAMTESTKEY00001", "iam-test-secret-Zq81", "eu-west-1"
SOURCE_CACHE, TARGET_CACHE = "storefront-old", "storefront-prod"
SECRETS = (SOURCE_PASSWORD, TARGET_PASSWORD, SECRET_KEY)
SIGNATURE = re.compile(r"X-Amz-Signature=[0-9a-f]{16}", re.I)


@pytest.fixture(scope="module")
def _plain_target(tmp_path_factory):
    """A plain, password-protected standalone target: the proxy is the only way in without the password."""
    server = testbed.start_standalone(tmp_path_factory.mktemp("iam"), password=TARGET_PASSWORD, databases=1)
    yield server
    server.stop()


@pytest.fixture
def aws_env(monkeypatch):
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    iam._SIGNERS.clear()  # the signer is built once per process, from the environment of its first use
    yield
    iam._SIGNERS.clear()


@pytest.fixture
def proxies(standalone_source, _plain_target, aws_env):
    _plain_target.flush()
    source = IamProxy(standalone_source.port, SOURCE_PASSWORD, cache=SOURCE_CACHE, access_key=ACCESS_KEY,
                      secret_key=SECRET_KEY, region=REGION, serverless=False).start()
    target = IamProxy(_plain_target.port, TARGET_PASSWORD, cache=TARGET_CACHE, access_key=ACCESS_KEY,
                      secret_key=SECRET_KEY, region=REGION, serverless=True).start()
    yield source, target
    source.stop()
    target.stop()


def iam_args(source: IamProxy, target: IamProxy) -> list[str]:
    return ["--source", source.url("migrator"), "--target", target.url("app-user"),
            "--source-iam", SOURCE_CACHE, "--target-iam", TARGET_CACHE]


def assert_no_token(text: str, *proxies: IamProxy) -> None:
    assert not SIGNATURE.search(text), text
    for proxy in proxies:
        for signature in proxy.signatures:
            assert signature not in text
    for secret in SECRETS:
        assert secret not in text


def run_dir_text(run_dir: Path) -> str:
    return "\n".join(path.read_bytes().decode("latin-1") for path in run_dir.rglob("*") if path.is_file())


def test_plan_run_verify_through_iam(standalone_source, _plain_target, proxies, run_dir):
    source, target = proxies
    seed_data.seed(standalone_source.client(), 2000, seed=21, short_ttl_keys=0)
    args = iam_args(source, target)
    plan = invoke("plan", *args, "--source-iam-type", "replication-group", "--target-iam-type", "serverless")
    assert plan.exit_code == 0, plan
    assert plan.stdout.count("auth IAM") == 2, plan.stdout
    ran = invoke("run", *args, "--run-dir", run_dir)
    assert ran.exit_code == 0, ran
    verified = invoke("verify", *args, "--run-dir", run_dir)
    assert verified.exit_code == 0, verified
    assert_same(snapshot(standalone_source), snapshot(_plain_target))
    assert source.refusals == [] and target.refusals == []
    assert source.accepted >= 3 and target.accepted >= 3  # plan, run's stages and verify each connected
    for outcome in (plan, ran, verified):
        assert_no_token(outcome.output, source, target)
    assert_no_token(run_dir_text(run_dir), source, target)


def test_refused_token_is_exit_2_naming_iam(standalone_source, proxies, run_dir, monkeypatch):
    source, target = proxies
    standalone_source.client().set("k", "v")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    iam._SIGNERS.clear()
    for command in (["plan", *iam_args(source, target)], ["run", *iam_args(source, target), "--run-dir", run_dir]):
        outcome = invoke(*command)
        assert_clean_error(outcome, 2, "IAM authentication failed", "elasticache:Connect", "user group",
                           secrets=SECRETS)
        assert_no_token(outcome.output, source, target)
    debug = invoke("--debug", "run", *iam_args(source, target), "--run-dir", run_dir)  # tracebacks too
    assert debug.exit_code == 2 and "IAM authentication failed" in debug.stderr
    assert_no_token(debug.output, source, target)
    assert "signature does not match" in source.refusals
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")  # not the cache's region
    iam._SIGNERS.clear()
    wrong_region = invoke("plan", *iam_args(source, target))
    assert_clean_error(wrong_region, 2, "IAM authentication failed", "region", secrets=SECRETS)
    assert_no_token(wrong_region.output, source, target)
    assert "credential scope is not this key, region and service" in source.refusals
    assert source.accepted == 0 and target.accepted == 0


def test_iam_input_errors_are_exit_2(proxies, run_dir, monkeypatch):
    source, target = proxies
    no_user = invoke("dump", "--source", source.url("migrator").replace("migrator@", ""), "--run-dir", run_dir,
                     "--source-iam", SOURCE_CACHE)
    assert_clean_error(no_user, 2, "--source-iam needs the ElastiCache user name")
    with_password = invoke("replay", "--target", target.url("app-user"), "--run-dir", run_dir,
                           "--target-iam", TARGET_CACHE, env={"REDIS_MIGRATE_TARGET_PASSWORD": TARGET_PASSWORD})
    assert_clean_error(with_password, 2, "password was given too", secrets=SECRETS)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    iam._SIGNERS.clear()
    no_credentials = invoke("plan", *iam_args(source, target))
    assert_clean_error(no_credentials, 2, "IAM authentication needs AWS credentials")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    iam._SIGNERS.clear()
    no_region = invoke("plan", *iam_args(source, target))
    assert_clean_error(no_region, 2, "IAM authentication needs an AWS region")
    bad_name = invoke("plan", *iam_args(source, target)[:-1], "cache.example.com:6379")
    assert bad_name.exit_code == 2 and "not a cache name" in bad_name.stderr
    assert source.accepted == 0 and target.accepted == 0


def test_proxy_checks_what_elasticache_checks(proxies):
    """The stand-in refuses what ElastiCache would: a stale token, another cache, user or resource type,
    and a connection that does not AUTH first; and it takes HELLO 3 AUTH as well as AUTH."""
    source, target = proxies
    token = iam.IamAuth(iam.IamCache(TARGET_CACHE), "app-user").token()

    def login(user: str, password: str, **kwargs) -> bool:
        try:
            return redis.Redis(port=target.port, username=user, password=password, socket_timeout=5,
                               retry=Retry(NoBackoff(), 0), **kwargs).ping()
        except redis.AuthenticationError:
            return False

    assert login("app-user", token) and login("app-user", token, protocol=3)
    assert not login("someone-else", token)
    assert not login("app-user", iam.IamAuth(iam.IamCache("another-cache"), "app-user").token())
    assert not login("app-user", iam.IamAuth(iam.IamCache(TARGET_CACHE, iam.REPLICATION_GROUP), "app-user").token())
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=target.port, socket_timeout=5, retry=Retry(NoBackoff(), 0)).get("k")
    # A token signed before the clock jumps 16 minutes is refused after it; a fresh one passes.
    time.sleep(1.1)  # X-Amz-Date has whole seconds: the token's second is over before the jump
    target.advance(16 * 60)
    assert not login("app-user", token)
    assert "token expired" in " ".join(target.refusals)
    assert login("app-user", iam.IamAuth(iam.IamCache(TARGET_CACHE), "app-user").token())


def test_reconnect_after_token_expiry_signs_a_fresh_token(standalone_source, _plain_target, proxies, run_dir):
    """Mid-run, each proxy's clock jumps 16 minutes (every token signed so far is expired) and every
    proxied connection is cut: the run reconnects with fresh tokens and ends exact."""
    source, target = proxies
    seed_data.seed(standalone_source.client(), 3000, seed=22, short_ttl_keys=0)
    source.advance_and_cut_after_bytes = (20_000, 16 * 60)
    target.advance_and_cut_after_bytes = (150_000, 16 * 60)
    ran = invoke("run", *iam_args(source, target), "--run-dir", run_dir)
    assert ran.exit_code == 0, ran
    for proxy in (source, target):  # the jump and the cut came mid-run, and the run connected again after it
        assert proxy.accepted_before_cut is not None and proxy.accepted > proxy.accepted_before_cut
    assert_same(snapshot(standalone_source), snapshot(_plain_target))
    assert source.refusals == [] and target.refusals == []
    assert_no_token(ran.output + run_dir_text(run_dir), source, target)


def test_replay_renews_its_connections_between_segments(standalone_source, _plain_target, proxies, run_dir,
                                                        monkeypatch):
    """With the renewal age (11 h) shortened to nothing, replay replaces its IAM connection (with a new
    token) before every segment after the first, as a planned close: no segment is written twice."""
    source, target = proxies
    seed_data.seed(standalone_source.client(), 3000, seed=23, big_keys=False, short_ttl_keys=0)
    args = iam_args(source, target)
    assert invoke("dump", *args[:2], *args[4:6], "--run-dir", run_dir, "--segment-records", 800,
                  "--scan-count", 100).exit_code == 0  # three or four segments
    before = target.accepted
    monkeypatch.setenv("REDIS_MIGRATE_IAM_RENEW_SECONDS", "0.000001")
    replayed = invoke("replay", *args[2:4], *args[6:], "--run-dir", run_dir, "--json")
    assert replayed.exit_code == 0, replayed
    assert_same(snapshot(standalone_source), snapshot(_plain_target))
    assert target.refusals == []
    counts = json.loads(replayed.stdout)
    print("replay through IAM, renewing per segment:", target.accepted - before, "connections;", counts)
    # Without renewal this replay opens 4 connections (discovery, probes, one wire); with it, one more wire
    # before each of the (at least 2) segments after the first.
    assert target.accepted - before >= 6
    assert counts["replay"]["restored"] == 3000 and counts["replay"]["retries"] == 0  # nothing written twice


def test_dump_wire_renews_at_its_next_send(proxies, monkeypatch):
    """The dump's connections always have a request in flight: one older than the renewal age is closed at
    its next send (Renewing, a ConnectionError, which the dump recovers from as from any dropped
    connection), and the new connection signs a new token, valid even after the old one expired."""
    source, _ = proxies
    endpoint = Endpoint.from_url("source", source.url("migrator"),
                                 iam=iam.IamCache(SOURCE_CACHE, iam.REPLICATION_GROUP))
    monkeypatch.setenv("REDIS_MIGRATE_IAM_RENEW_SECONDS", "0.2")
    wire = Wire(endpoint, "127.0.0.1", source.port, renew=True)
    assert wire.call(b"PING") == b"PONG" and not wire.renew_due
    time.sleep(0.3)
    assert wire.renew_due
    with pytest.raises(Renewing):
        wire.send(pack(b"PING"))
    assert wire.sock is None
    time.sleep(1.1)  # the next token is dated after the jump
    source.advance(16 * 60)
    again = Wire(endpoint, "127.0.0.1", source.port, renew=True)
    assert again.call(b"PING") == b"PONG"
    assert source.accepted == 2 and source.refusals == []


def test_scrub_masks_sigv4_tokens(aws_env):
    token = iam.IamAuth(iam.IamCache(TARGET_CACHE), "app-user").token()
    signature = token.rsplit("X-Amz-Signature=", 1)[1]
    for text in (f"AUTH app-user {token}", f"error: {token!r}", token.replace("=", "%3D")):
        masked = scrub(text)
        assert signature not in masked and ACCESS_KEY not in masked, masked
        assert "X-Amz-Signature=***" in masked or "X-Amz-Signature%3D***" in masked


def test_sync_follows_through_iam_across_a_token_expiry(standalone_source, _plain_target, proxies, run_dir):
    """sync's subscriber, reader and writer all sign their own tokens: after the proxies' clocks jump 16
    minutes and every proxied connection is cut, sync reconnects with fresh tokens (a gap, then a reconcile)
    and still ends exact, with no token anywhere."""
    from test_sync import Sync
    source, target = proxies
    backend = standalone_source.client()
    seed_data.seed(backend, 1000, seed=23, short_ttl_keys=0)
    backend.config_set("notify-keyspace-events", "KA")  # as the parameter group would set it
    sync = Sync(run_dir, source.url("migrator"), target.url("app-user"), "--source-iam", SOURCE_CACHE,
                "--target-iam", TARGET_CACHE).start()
    try:
        sync.following()
        backend.set("iam:before-expiry", "1")
        settled = sync.wait(lambda s: s.get("applied", 0) >= 1 and s.get("pending") == 0, "the first change applied")
        accepted = source.accepted + target.accepted
        for proxy in (source, target):
            proxy.advance(16 * 60)
            proxy.cut_all()
        backend.set("iam:after-expiry", "2")
        backend.delete("iam:before-expiry")
        sync.wait(lambda s: s.get("reconciles", 0) > settled.get("reconciles", 0) and s.get("pending") == 0
                  and s.get("unreconciled_gaps") == 0, "the reconcile after the cut")
        assert sync.stop() == 0, sync.output()
    finally:
        sync.cleanup()
        backend.config_set("notify-keyspace-events", "")
    assert_same(snapshot(standalone_source), snapshot(_plain_target))
    assert _plain_target.client().get("iam:after-expiry") == b"2"
    assert source.accepted + target.accepted > accepted  # reconnected, each with a token signed after the jump
    assert source.refusals == [] and target.refusals == []
    assert_no_token(sync.output() + run_dir_text(run_dir), source, target)
