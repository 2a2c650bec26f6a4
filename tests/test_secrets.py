"""Secrets: every command, with a password in the URL, in the environment, and an IAM-style token.

Each command runs as an operator runs it (a separate process), and we scan everything it leaves:
stdout, stderr (--debug tracebacks included), every file in the run dir (segments decoded too), the
SSM parameters the cutover wrote, and the texts of failures (wrong password, TLS, unreachable).
Found secrets must be 0. Dump files are 0600 and the run dir 0700, even under umask 000. TLS is
verified (chain and host name) unless --tls-insecure, which warns.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import quote

import pytest

import seed_data
import testbed
from aws_helpers import own_client
from conftest import SOURCE_PASSWORD, TARGET_PASSWORD
from migrate.datapath.segments import read_segment
from migrate.rundir import RunDir
from reliability import Outcome, assert_clean_error, spawn
from snapshot import assert_same, snapshot

IAM_USER = "iam-migrator"
SIGNATURE = "9f2c4e1b7a3d5f60c8e2a4b6d8f0e1c3a5b7d9f1e3c5a7b9d1f3e5a7c9b1d3f5"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
IAM_TOKEN = ("migrate-cache/?Action=connect&User=iam-migrator&ResourceType=ServerlessCache"
             "&X-Amz-Algorithm=AWS4-HMAC-SHA256"
             f"&X-Amz-Credential={ACCESS_KEY}%2F20261126%2Fus-east-1%2Felasticache%2Faws4_request"
             "&X-Amz-Date=20261126T041200Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host"
             f"&X-Amz-Signature={SIGNATURE}")
ENV_SOURCE_PASSWORD = SOURCE_PASSWORD  # the same secret, given through the environment in some runs


def secret_forms() -> list[str]:
    """Every way a secret could show up: as given, URL-quoted, and its most telling parts."""
    forms = {SOURCE_PASSWORD, TARGET_PASSWORD, IAM_TOKEN, quote(IAM_TOKEN, safe=""), SIGNATURE, ACCESS_KEY}
    return sorted(forms)


class Scanner:
    """Collects every text an invocation produced and every file it wrote, and counts secrets in them."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, bytes]] = []
        self.runs = 0

    def add(self, where: str, data: str | bytes) -> None:
        self.texts.append((where, data.encode() if isinstance(data, str) else data))

    def run(self, *args, env=None, code: int | None = 0, timeout: float = 180) -> Outcome:
        outcome = spawn(*args, env=env, timeout=timeout)
        self.runs += 1
        self.add(f"{args[0]} stdout", outcome.stdout)
        self.add(f"{args[0]} stderr", outcome.stderr)
        if code is not None:
            assert outcome.exit_code == code, str(outcome)
        assert "Traceback" not in outcome.output or "--debug" in args, str(outcome)
        return outcome

    def add_run_dir(self, run_dir: Path) -> None:
        for path in sorted(run_dir.rglob("*")):
            if not path.is_file():
                continue
            self.add(str(path), path.read_bytes())
            if path.suffix == ".seg":
                for record in read_segment(path):
                    self.add(f"{path} record", record.key + record.payload + b"".join(record.items))

    def found(self) -> list[str]:
        hits = []
        for secret in secret_forms():
            for where, data in self.texts:
                if secret.encode() in data:
                    hits.append(f"{secret[:12]}... in {where}")
        return hits


@pytest.fixture
def iam_user(serverless_target):
    """An ACL user on the target whose password is an IAM-style (SigV4 presigned) token."""
    client = serverless_target.first.client()
    client.execute_command("ACL", "SETUSER", IAM_USER, "on", f">{IAM_TOKEN}", "~*", "&*", "+@all")
    yield IAM_USER
    client.execute_command("ACL", "DELUSER", IAM_USER)


def iam_url(target, in_url: bool) -> str:
    node = target.first
    secret = f":{quote(IAM_TOKEN, safe='')}" if in_url else ""
    return f"rediss://{IAM_USER}{secret}@127.0.0.1:{node.port}/0?ssl_ca_certs={target.certs.ca}"


def test_no_secret_anywhere(standalone_source, serverless_target, iam_user, aws, tmp_path):
    scan = Scanner()
    seed_data.seed(standalone_source.client(), 400, seed=71, big_keys=False, short_ttl_keys=0)
    source_url = standalone_source.url()
    bare_source = standalone_source.url(with_password=False)
    target_url = serverless_target.url()
    bare_target = serverless_target.first.url(0, with_password=False)
    env_both = {"REDIS_MIGRATE_SOURCE_PASSWORD": ENV_SOURCE_PASSWORD, "REDIS_MIGRATE_TARGET_PASSWORD": TARGET_PASSWORD}
    env_token = {"REDIS_MIGRATE_TARGET_PASSWORD": IAM_TOKEN}
    runs = {name: tmp_path / name for name in ("url", "env", "token-url", "token-env", "debug", "sync")}

    # 1. passwords in the URLs: dump, replay, status, then run on a fresh dir with --json
    scan.run("dump", "--source", source_url, "--run-dir", runs["url"], "--json")
    scan.run("replay", "--target", target_url, "--run-dir", runs["url"], "--json")
    scan.run("status", "--run-dir", runs["url"])
    scan.run("status", "--run-dir", runs["url"], "--json")
    assert_same(snapshot(standalone_source), snapshot(serverless_target))

    # 2. passwords from the environment, URLs without them
    serverless_target.flush()
    scan.run("run", "--source", bare_source, "--target", bare_target, "--run-dir", runs["env"], "--json", env=env_both)
    scan.run("status", "--run-dir", runs["env"], "--json")

    # 3. the IAM-style token, URL-quoted in the URL, then in the environment with only the user in the URL
    serverless_target.flush()
    scan.run("run", "--source", source_url, "--target", iam_url(serverless_target, True), "--run-dir",
             runs["token-url"], "--json")
    serverless_target.flush()
    scan.run("run", "--source", source_url, "--target", iam_url(serverless_target, False), "--run-dir",
             runs["token-env"], env=env_token)
    scan.run("plan", "--source", source_url, "--target", iam_url(serverless_target, True), "--json", code=None)
    scan.run("plan", "--source", bare_source, "--target", iam_url(serverless_target, False), env=env_both | env_token,
             code=None)
    assert_same(snapshot(standalone_source), snapshot(serverless_target))
    scan.run("verify", "--source", source_url, "--target", iam_url(serverless_target, True), "--run-dir",
             runs["token-url"], "--json")
    serverless_target.first.client().delete(next(iter(snapshot(serverless_target))))  # a difference to report
    scan.run("verify", "--source", bare_source, "--target", iam_url(serverless_target, False), "--run-dir",
             runs["token-env"], env=env_both | env_token, code=1)
    scan.run("verify", "--source", bare_source, "--target", bare_target, "--run-dir", runs["env"], "--repair",
             "--json", env=env_both)
    scan.run("verify", "--source", source_url, "--target", target_url, "--against-dump", "--run-dir", runs["url"],
             "--sample", 50, code=None)

    # 4. failures whose texts must not carry the secret either, --debug tracebacks included
    wrong_token = IAM_TOKEN.replace(SIGNATURE, SIGNATURE[::-1])
    failures = [
        (("dump", "--source", source_url.replace(SOURCE_PASSWORD, TARGET_PASSWORD), "--run-dir", runs["debug"]), None),
        (("replay", "--target", bare_target, "--run-dir", runs["url"]), {"REDIS_MIGRATE_TARGET_PASSWORD": IAM_TOKEN}),
        (("replay", "--target", iam_url(serverless_target, False), "--run-dir", runs["url"]),
         {"REDIS_MIGRATE_TARGET_PASSWORD": wrong_token}),
        (("dump", "--source", f"rediss://:{SOURCE_PASSWORD}@127.0.0.1:{standalone_source.port}/0"
                  "?socket_connect_timeout=1", "--run-dir", runs["debug"]), None),
        (("dump", "--source", f"redis://:{quote(IAM_TOKEN, safe='')}@127.0.0.1:{testbed.free_port()}/0",
          "--run-dir", runs["debug"]), None),
        (("run", "--source", source_url, "--target",
          f"redis://:{TARGET_PASSWORD}@127.0.0.1:{serverless_target.first.port}/0?socket_connect_timeout=1",
          "--run-dir", runs["debug"]), None),
        (("sync", "--source", source_url, "--target", target_url, "--run-dir", runs["sync"]), None),  # events off
    ]
    for args, env in failures:
        for debug in ((), ("--debug",)):
            outcome = scan.run(*debug, *args, env=env, code=None)
            assert outcome.exit_code == 2, str(outcome)
            if not debug:
                assert_clean_error(outcome, 2)

    # 5. cutover and rollback (moto's SSM), given the target URL with its password and with the token
    ssm = own_client("ssm")
    ssm.put_parameter(Name="/storefront/sec/redis/endpoint", Value="old.internal", Type="String")
    ssm.put_parameter(Name="/storefront/sec/redis/port", Value="6379", Type="String")
    aws_env = aws.env()
    for url in (target_url, iam_url(serverless_target, True)):
        scan.run("cutover", "--env", "sec", "--target", url, "--run-dir", runs["url"], "--force", "--dry-run",
                 env=aws_env, code=None)
        scan.run("cutover", "--env", "sec", "--target", url, "--run-dir", runs["url"], "--force", "--json",
                 env=aws_env)
        scan.run("rollback", "--env", "sec", "--run-dir", runs["url"], "--json", env=aws_env)
    for name in ("/storefront/sec/redis/endpoint", "/storefront/sec/redis/port"):
        for version in ssm.get_parameter_history(Name=name)["Parameters"]:
            scan.add(f"ssm {name}", repr(version))

    # 6. archive to S3 (object names, metadata, manifest) and retire-check, with the source URL's password
    s3 = own_client("s3")
    s3.create_bucket(Bucket="sec-archive")
    s3.put_public_access_block(Bucket="sec-archive", PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    scan.run("archive", "--run-dir", runs["url"], "--to", "s3://sec-archive/sec", "--json", env=aws_env)
    scan.run("retire-check", "--env", "sec", "--source", source_url, "--watch", "1s", "--min-age", "0",
             "--archive", "s3://sec-archive/sec", "--json", env=aws_env, code=None)
    for item in s3.list_objects_v2(Bucket="sec-archive")["Contents"]:
        scan.add("s3 object", repr(s3.head_object(Bucket="sec-archive", Key=item["Key"])))
        if item["Key"].endswith("manifest.json"):
            scan.add("s3 manifest", s3.get_object(Bucket="sec-archive", Key=item["Key"])["Body"].read().decode())

    for run_dir in runs.values():
        if run_dir.exists():
            scan.add_run_dir(run_dir)
    assert scan.runs >= 30
    assert scan.found() == [], scan.found()


def test_modes_even_under_umask_000(standalone_source, serverless_target, tmp_path):
    """A run dir that already exists with 0755 becomes 0700; every file in it is 0600."""
    standalone_source.client().set("k", "v")
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o755)
    run_dir.chmod(0o755)
    import subprocess

    import reliability
    done = subprocess.run(reliability.command("run", "--source", standalone_source.url(), "--target",
                                              serverless_target.url(), "--run-dir", run_dir),
                          env=reliability.child_env(), capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: os.umask(0))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((run_dir / "segments").stat().st_mode) == 0o700
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".seg" for p in files)
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: "0o600" for p in files}


@pytest.fixture(scope="module")
def wrong_name_server(tmp_path_factory):
    """A TLS server whose certificate (from its own CA) names another host."""
    import trustme
    directory = tmp_path_factory.mktemp("wrong-name")
    ca = trustme.CA()
    server_cert = ca.issue_cert("cache.other.example")
    certs = testbed.Certs(directory / "certs")
    certs.directory.mkdir()
    ca.cert_pem.write_to_path(str(certs.ca))
    server_cert.cert_chain_pems[0].write_to_path(str(certs.cert))
    server_cert.private_key_pem.write_to_path(str(certs.key))
    port = testbed.free_port()
    server = testbed.RedisServer(port, directory / "server", testbed.server_args(port, password=TARGET_PASSWORD,
                                                                                   certs=certs),
                                 password=TARGET_PASSWORD, certs=certs).start()
    yield server
    server.stop()


def test_tls_is_verified_unless_tls_insecure_which_warns(standalone_source, wrong_name_server, tmp_path):
    """The chain is trusted (its CA is given) but the name is not this host's: refused. --tls-insecure
    connects, and says loudly that it did not verify."""
    standalone_source.client().set("k", "v")
    url = (f"rediss://:{TARGET_PASSWORD}@127.0.0.1:{wrong_name_server.port}/0"
           f"?ssl_ca_certs={wrong_name_server.certs.ca}")
    refused = spawn("run", "--source", standalone_source.url(), "--target", url, "--run-dir", tmp_path / "a")
    assert_clean_error(refused, 2, "cannot connect", secrets=(TARGET_PASSWORD, SOURCE_PASSWORD))
    assert "certificate" in refused.stderr.lower() or "hostname" in refused.stderr.lower(), str(refused)
    insecure = spawn("run", "--source", standalone_source.url(), "--target", url, "--run-dir", tmp_path / "b",
                     "--tls-insecure")
    assert insecure.exit_code == 0, str(insecure)
    assert "--tls-insecure: TLS certificates are NOT verified" in insecure.stderr
    assert TARGET_PASSWORD not in insecure.output
    assert wrong_name_server.client(ssl_check_hostname=False).get("k") == b"v"
    planned = spawn("plan", "--source", standalone_source.url(), "--target", url, "--tls-insecure")
    assert "--tls-insecure: TLS certificates are NOT verified" in planned.stderr, str(planned)
    assert "Traceback" not in planned.output and TARGET_PASSWORD not in planned.output


def test_run_dir_ledgers_hold_no_url_secret_even_when_asked_to_write_one(tmp_path):
    """RunDir itself never stores a URL with a password: bind() gets identities, not URLs."""
    from migrate.net.endpoints import Endpoint
    endpoint = Endpoint.from_url("source", f"redis://user:{SOURCE_PASSWORD}@127.0.0.1:6379/0")
    directory = RunDir(tmp_path / "run", create=True)
    directory.bind("source", {"url": endpoint.identity, "db": 0})
    assert SOURCE_PASSWORD not in (tmp_path / "run" / "run.json").read_text()
    assert SOURCE_PASSWORD not in endpoint.redacted and "***" in endpoint.redacted


def test_the_scanner_finds_a_planted_secret(tmp_path):
    """The scan above is only worth its zero if it would find a leak: plant one in each form."""
    for secret in secret_forms():
        scan = Scanner()
        (tmp_path / "leak.json").write_text(f'{{"url": "redis://:{secret}@host:6379"}}')
        scan.add_run_dir(tmp_path)
        assert scan.found(), secret
