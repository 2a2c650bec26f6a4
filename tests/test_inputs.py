"""Hostile inputs on real servers (issue 16, items 3, 7 and 8): a login refused mid-run, other databases,
an empty source, a plan that sizes by its sample, a cluster reached through a replica, a db that does not
exist and a port that does not speak Redis. Each case ends with a clear message and the right exit code,
within seconds, and never prints a password.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import seed_data
import testbed
from aws_helpers import own_client
from conftest import SOURCE_PASSWORD, TARGET_PASSWORD
from faultproxy import FaultProxy
from reliability import Outcome, assert_clean_error, invoke, popen
from snapshot import assert_same, snapshot

ROTATED = "Rotated-Pa55-e71c"
SECRETS = (SOURCE_PASSWORD, TARGET_PASSWORD, ROTATED)
REFUSED_WITHIN = 40  # seconds: a refused login must end the run at once, not after the 120 s of retries


def ledger(run_dir, name: str) -> dict:
    try:
        return json.loads((run_dir / f"{name}.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def wait_for(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def finish(process, timeout: float = REFUSED_WITHIN):
    """The process's outcome; a run still going after `timeout` fails the test (it is retrying a login)."""
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return Outcome(process.returncode, out, err)


# --- item 3: a login refused on a reconnect ------------------------------------------------------------

@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """A plain standalone Redis without restricted commands, so that a test can change its password
    (ACL SETUSER default) while the tool is connected through a fault proxy."""
    server = testbed.start_standalone(tmp_path_factory.mktemp("auth"), password=None)
    with FaultProxy(server.port, max_seconds=900) as proxy:
        yield server, proxy
    server.stop()


def set_password(server, password: str | None) -> None:
    """Change the default user's password. The server's own client follows (it logs in again)."""
    client = server.client()
    client.execute_command("ACL", "SETUSER", "default", "resetpass", f">{password}" if password else "nopass")
    server.password = password


@pytest.fixture
def proxied_auth_server(auth_server):
    server, proxy = auth_server
    server.password = None
    try:
        server.client().flushall()
    except Exception:  # noqa: BLE001 - a test left a password on it
        for password in (ROTATED, SOURCE_PASSWORD, TARGET_PASSWORD):
            server.password = password
            try:
                server.client().ping()
                break
            except Exception:  # noqa: BLE001
                continue
        set_password(server, None)
        server.client().flushall()
    proxy.configure()
    yield server, proxy
    set_password(server, None)


def url(port: int, password: str | None) -> str:
    return f"redis://{f':{password}@' if password else ''}127.0.0.1:{port}/0"


@pytest.mark.parametrize("change", ["rotated", "added"])
def test_target_login_refused_on_reconnect_is_exit_2_at_once(standalone_source, proxied_auth_server, run_dir,
                                                            change):
    """The target's password is rotated (or one is set on a target that had none) mid-replay, then the
    connections drop: the replay's reconnect is refused, and the run stops at once naming authentication."""
    target, proxy = proxied_auth_server
    old = TARGET_PASSWORD if change == "rotated" else None
    set_password(target, old)
    seed_data.seed(standalone_source.client(), 8000, seed=61, big_keys=False, short_ttl_keys=0)
    process = popen("run", "--source", standalone_source.url(), "--target", url(proxy.port, old),
                    "--run-dir", run_dir, "--max-ops-per-sec", 4_000)  # about 2 s of replay: the cut comes early in it
    try:
        wait_for(lambda: ledger(run_dir, "replay").get("started_at") and proxy.live() and target.client().dbsize())
        set_password(target, ROTATED)
        proxy.cut_all()
    finally:
        outcome = finish(process)
    assert_clean_error(outcome, 2, "authentication", "password", secrets=SECRETS)
    assert "kept failing" not in outcome.stderr


def test_source_login_refused_on_reconnect_is_exit_2_at_once(proxied_auth_server, run_dir):
    """The same on the source side: the dump's reconnect loop does not retry a refused login."""
    source, proxy = proxied_auth_server
    set_password(source, SOURCE_PASSWORD)
    seed_data.seed(source.client(), 6000, seed=62, big_keys=False, short_ttl_keys=0)
    proxy.set_latency(5)
    process = popen("dump", "--source", url(proxy.port, SOURCE_PASSWORD), "--run-dir", run_dir, "--scan-count", 50,
                    "--segment-records", 500)  # the first checkpoint after about 10 of 120 batches
    try:
        wait_for(lambda: any(m.get("next_seq") for m in ledger(run_dir, "dump").get("masters", {}).values()))
        set_password(source, ROTATED)
        proxy.cut_all()
    finally:
        outcome = finish(process)
    assert_clean_error(outcome, 2, "authentication", "password", secrets=SECRETS)


# --- item 7: other databases ---------------------------------------------------------------------------

def seed_three_databases(server) -> None:
    seed_data.seed(server.client(), 300, seed=71, short_ttl_keys=0)
    server.client(db=3).set("legacy:1", "v")
    server.client(db=5).mset({"old:1": "a", "old:2": "b"})


@pytest.mark.parametrize("command", ["dump", "run"])
def test_keys_in_other_databases_are_refused(standalone_source, serverless_target, run_dir, command):
    seed_three_databases(standalone_source)
    args = ["--source", standalone_source.url(), "--run-dir", run_dir]
    if command == "run":
        args += ["--target", serverless_target.url()]
    outcome = invoke(command, *args)
    assert_clean_error(outcome, 2, "db3: 1 keys", "db5: 2 keys", "--ignore-other-dbs", secrets=SECRETS)
    assert serverless_target.first.client().dbsize() == 0
    assert not list((run_dir / "segments").iterdir())


def test_ignored_databases_are_recorded_and_shown_by_cutover(standalone_source, serverless_target, run_dir, aws):
    seed_three_databases(standalone_source)
    outcome = invoke("run", "--source", standalone_source.url(), "--target", serverless_target.url(),
                     "--run-dir", run_dir, "--ignore-other-dbs")
    assert outcome.exit_code == 0, str(outcome)
    assert "not migrated (db3: 1 keys, db5: 2 keys)" in outcome.stderr
    assert_same(snapshot(standalone_source), snapshot(serverless_target))
    assert ledger(run_dir, "run")["ignored_databases"]["others"] == {"3": 1, "5": 2}
    ssm = own_client("ssm")
    for name, value in (("endpoint", "old-redis.internal"), ("port", "6379")):
        ssm.put_parameter(Name=f"/storefront/test/redis/{name}", Value=value, Type="String")
    shown = invoke("cutover", "--env", "test", "--target", serverless_target.url(), "--run-dir", run_dir,
                   "--dry-run")
    assert shown.exit_code == 0, str(shown)  # a warning, not a refusal: the operator chose it
    assert "WARNING: only db0 was migrated: the source also held db3: 1 keys, db5: 2 keys" in shown.stdout
    assert "would go ahead" in shown.stdout


def test_run_with_db_3_plans_db_3(standalone_source, serverless_target, run_dir):
    """run --db 3 surveys db 3 in its plan (not db 0, where it would warn about db 3 itself)."""
    seed_data.seed(standalone_source.client(db=3), 200, seed=73, short_ttl_keys=0)
    outcome = invoke("run", "--source", standalone_source.url(), "--target", serverless_target.url(),
                     "--run-dir", run_dir, "--db", 3)
    assert outcome.exit_code == 0, str(outcome)
    assert "plan:" not in outcome.stderr, outcome.stderr
    plan = ledger(run_dir, "plan")
    assert (plan["source"]["db"], plan["source"]["keys"], plan["verdict"]) == (3, 200, "go")
    assert_same(snapshot(standalone_source, db=3), snapshot(serverless_target))


# --- item 7: an empty source -----------------------------------------------------------------------------

def test_empty_source_is_a_plan_blocker(standalone_source, serverless_target):
    outcome = invoke("plan", "--source", standalone_source.url(), "--target", serverless_target.url())
    assert outcome.exit_code == 1, str(outcome)
    assert "BLOCKED" in outcome.stdout and "holds no keys in db0" in outcome.stdout


@pytest.mark.parametrize("command", ["dump", "run"])
def test_empty_source_is_refused_unless_allowed(standalone_source, serverless_target, run_dir, command):
    args = ["--source", standalone_source.url(), "--run-dir", run_dir]
    if command == "run":
        args += ["--target", serverless_target.url()]
    assert_clean_error(invoke(command, *args), 2, "holds no keys", "wrong host, port or database",
                       "restarted", "--allow-empty-source", secrets=SECRETS)
    assert not (run_dir / "dump.json").exists()
    allowed = invoke(command, *args, "--allow-empty-source")
    assert allowed.exit_code == 0, str(allowed)


# --- item 7: plan's size estimate --------------------------------------------------------------------------

def test_plan_estimate_is_not_fooled_by_small_keys_first_in_scan_order(standalone_source, serverless_target):
    """The keys SCAN returns first are small, the rest are big: the estimate must still be near the data's
    real size (the first 1,000 scanned keys would have said about 3% of it)."""
    client = standalone_source.client()
    client.mset({f"k:{i}": "s" for i in range(4000)})
    first = []
    for key in client.scan_iter(count=1000):  # the order the survey used to sample in
        first.append(key)
        if len(first) >= 1000:
            break
    small = set(first)
    pipe = client.pipeline(transaction=False)
    for i in range(4000):  # same keys, so the same hash table and SCAN order; only the values grow
        if f"k:{i}".encode() not in small:
            pipe.set(f"k:{i}", b"v" * 4000)
    pipe.execute()
    dataset = client.info("memory")["used_memory_dataset"]
    outcome = invoke("plan", "--source", standalone_source.url(), "--target", serverless_target.url(),
                     "--sample", 1000, "--json")
    assert outcome.exit_code == 0, str(outcome)
    source = json.loads(outcome.stdout)["source"]
    assert source["data_bytes"] >= 0.8 * dataset, (source["data_bytes"], dataset)
    assert source["data_bytes_sampled"] >= 0.5 * dataset, (source["data_bytes_sampled"], dataset)  # a random sample
    text = invoke("plan", "--source", standalone_source.url(), "--target", serverless_target.url(),
                  "--sample", 1000).stdout
    assert "largest  of the" in text and "sampled keys" in text


# --- item 7: a cluster reached through a replica's address --------------------------------------------------

@pytest.fixture(scope="module")
def cluster_with_replica(tmp_path_factory):
    """Two masters and a replica of the first (CLUSTER REPLICATE): only the tests that need it pay for it."""
    cluster = testbed.start_cluster(tmp_path_factory.mktemp("replicated"), 2, password=SOURCE_PASSWORD, replicas=1)
    yield cluster
    cluster.stop()


@pytest.mark.parametrize("command", ["dump", "run"])
def test_cluster_source_given_by_a_replica_copies_every_master(cluster_with_replica, serverless_target, run_dir,
                                                               command):
    cluster = cluster_with_replica
    cluster.flush()
    seed_data.seed(cluster.cluster_client(), 1500, seed=74, short_ttl_keys=0)
    replica = cluster.replicas[0]
    assert replica.client().info("replication")["role"] == "slave"
    if command == "dump":
        outcome = invoke("dump", "--source", replica.url(), "--run-dir", run_dir, "--json")
        assert outcome.exit_code == 0, str(outcome)
        outcome = invoke("replay", "--target", serverless_target.url(), "--run-dir", run_dir)
    else:
        outcome = invoke("run", "--source", replica.url(), "--target", serverless_target.url(), "--run-dir", run_dir)
    assert outcome.exit_code == 0, str(outcome)
    assert_same(snapshot(cluster), snapshot(serverless_target))


def test_standalone_replica_is_still_refused(standalone_source, tmp_path, run_dir):
    port = testbed.free_port()
    replica = testbed.RedisServer(port, tmp_path / "replica", testbed.server_args(port, password=SOURCE_PASSWORD)
                                  + ["--replicaof", "127.0.0.1", str(standalone_source.port)],
                                  password=SOURCE_PASSWORD).start()
    try:
        assert_clean_error(invoke("dump", "--source", replica.url(), "--run-dir", run_dir), 2, "is a replica",
                           secrets=SECRETS)
    finally:
        replica.stop()


# --- item 8: a db that does not exist, a port that is not Redis ----------------------------------------------

@pytest.mark.parametrize("command", ["dump --db 16", "plan /99", "run /99", "verify --db 99"])
def test_db_out_of_range(standalone_source, serverless_target, run_dir, command):
    standalone_source.client().set("k", "v")
    name, how = command.split(" ", 1)
    db = int(how.split()[-1].strip("/"))
    source = standalone_source.url(db if how.startswith("/") else 0)
    args = {"dump": ["--source", source, "--run-dir", run_dir],
            "plan": ["--source", source, "--target", serverless_target.url()],
            "run": ["--source", source, "--target", serverless_target.url(), "--run-dir", run_dir],
            "verify": ["--source", source, "--target", serverless_target.url()]}[name]
    if how.startswith("--db"):
        args += ["--db", db]
    assert_clean_error(invoke(name, *args), 2, f"db {db} does not exist", "16 databases", "0-15", secrets=SECRETS)


@pytest.fixture(scope="module")
def http_port():
    """A web server where a Redis port was expected."""
    class Quiet(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("command", ["plan", "dump", "run", "verify-source", "verify-target"])
def test_a_port_that_does_not_speak_redis(standalone_source, serverless_target, http_port, tmp_path, command):
    standalone_source.client().set("k", "v")
    web = f"redis://:{SOURCE_PASSWORD}@127.0.0.1:{http_port}/0"
    source, target = standalone_source.url(), serverless_target.url()
    args = {"plan": ["plan", "--source", web, "--target", target],
            "dump": ["dump", "--source", web, "--run-dir", tmp_path / "run"],
            "run": ["run", "--source", web, "--target", target, "--run-dir", tmp_path / "run"],
            "verify-source": ["verify", "--source", web, "--target", target],
            "verify-target": ["verify", "--source", source, "--target", web]}[command]
    assert_clean_error(invoke(*args), 2, "does not speak the Redis protocol", "right port", secrets=SECRETS)
