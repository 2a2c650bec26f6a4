#!/usr/bin/env python3
"""The demo behind scripts/demo.sh: the real CLI, step by step, as an operator would see it."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import seed_data  # noqa: E402
import testbed  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLI = str(ROOT / ".venv" / "bin" / "redis-migrate")
ENV_NAME = "demo"
PREFIX = f"/storefront/{ENV_NAME}/redis"
SESSION_KEY = b"session:demo-shopper"


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def cli(*args: str, env: dict, ok=(0,)) -> tuple[int, float]:
    """Run one CLI command, showing it (URLs carry no password: those come from the environment)."""
    print("$ redis-migrate " + " ".join(shlex.quote(a) for a in args), flush=True)
    started = time.monotonic()
    code = subprocess.call([CLI, *args], env=env)
    seconds = time.monotonic() - started
    if code not in ok:
        raise SystemExit(f"demo: `redis-migrate {args[0]}` exited {code}")
    return code, seconds


def ssm_client(env: dict):
    """An SSM client on moto, the way the applications would build it (boto3's standard chain)."""
    import boto3

    return boto3.Session(aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                         region_name=env["AWS_DEFAULT_REGION"]).client("ssm", endpoint_url=env["AWS_ENDPOINT_URL"])


def app_check(env: dict, certs: testbed.Certs, tls: bool, password: str) -> str:
    """The seed guide's Python snippet, with TLS switched on for ElastiCache Serverless."""
    import redis

    ssm = ssm_client(env)
    host = ssm.get_parameter(Name=f"{PREFIX}/endpoint")["Parameter"]["Value"]
    port = int(ssm.get_parameter(Name=f"{PREFIX}/port")["Parameter"]["Value"])
    extra = {"ssl": True, "ssl_ca_certs": str(certs.ca), "ssl_check_hostname": False} if tls else {}
    client = redis.Redis(host=host, port=port, password=password, socket_connect_timeout=5, socket_timeout=5, **extra)
    value = client.get(SESSION_KEY)
    ttl = client.pttl(SESSION_KEY)
    line = f"app reads {host}:{port} ({'TLS' if tls else 'plain'}): {SESSION_KEY.decode()} = {value!r}, TTL {ttl} ms"
    print(line, flush=True)
    if value is None or ttl <= 0:
        raise SystemExit("demo: the application check failed")
    return f"{host}:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=200_000)
    args = parser.parse_args()
    base = testbed.scratch_dir("redis-migrate-demo-")
    started: list = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run_demo(args.keys, base, started)
    finally:
        for process in reversed(started):
            process.stop()
        testbed.remove(base)
        print("demo: every server it started is stopped", flush=True)


def run_demo(keys: int, base: Path, started: list) -> None:
    total_start = time.monotonic()
    banner("starting a Fargate-style source, a serverless-like TLS target and moto (SSM)")
    certs = testbed.Certs.make(base / "certs")
    source = testbed.start_standalone(base / "source", password="demo-source-password")
    started.append(source)
    target = testbed.start_serverless_like(base / "target", certs, password="demo-target-password")
    started.append(target)
    moto = testbed.MotoServer(base / "moto").start()
    started.append(moto)
    env = {**os.environ, **moto.env(), "REDIS_MIGRATE_SOURCE_PASSWORD": source.password,
           "REDIS_MIGRATE_TARGET_PASSWORD": target.password}
    env.pop("AWS_PROFILE", None)
    ssm = ssm_client(env)
    ssm.put_parameter(Name=f"{PREFIX}/endpoint", Value="127.0.0.1", Type="String")
    ssm.put_parameter(Name=f"{PREFIX}/port", Value=str(source.port), Type="String")
    print(f"source   redis://127.0.0.1:{source.port}/0 (password)\ntarget   rediss://127.0.0.1:{target.first.port} "
          f"(TLS, one node owning all slots, CONFIG/KEYS/DEBUG... disabled)\nSSM      {PREFIX}/endpoint, /port")

    banner(f"seeding {keys:,} realistic keys (sessions, carts, products, streams, big keys...)")
    seeded = seed_data.seed(source.client(), keys, seed=1)
    source.client().set(SESSION_KEY, b'{"cart": 3, "user": "demo"}', px=3_600_000)
    print(f"{seeded['keys']:,} keys written, {seeded['with_ttl']:,} with a TTL")

    source_url = f"redis://127.0.0.1:{source.port}/0"
    target_url = f"rediss://127.0.0.1:{target.first.port}/0?ssl_ca_certs={certs.ca}"
    run_dir = str(base / "run")
    timings = {}
    banner("1. plan: preflight of source and target")
    cli("plan", "--source", source_url, "--target", target_url, "--env", ENV_NAME, env=env, ok=(0, 1))
    banner("2. run: dump + replay + verify (resumable)")
    code, timings["run"] = cli("run", "--source", source_url, "--target", target_url, "--run-dir", run_dir, env=env)
    banner("3. cutover --dry-run: what would change, and the gate's verdict")
    cli("cutover", "--env", ENV_NAME, "--target", target_url, "--run-dir", run_dir, "--dry-run", env=env)
    before = (ssm.get_parameter(Name=f"{PREFIX}/endpoint")["Parameter"]["Value"],
              ssm.get_parameter(Name=f"{PREFIX}/port")["Parameter"]["Value"])
    banner("4. cutover: SSM now points at the serverless cache")
    cli("cutover", "--env", ENV_NAME, "--target", target_url, "--run-dir", run_dir, env=env)
    banner("5. application-side check (TLS on, as the RUNBOOK requires)")
    after = app_check(env, certs, tls=True, password=target.password)
    banner("6. rollback: SSM points at the old Redis again")
    cli("rollback", "--env", ENV_NAME, "--run-dir", run_dir, env=env)
    rolled_back = app_check(env, certs, tls=False, password=source.password)

    summary = json.loads(subprocess.run([CLI, "status", "--run-dir", run_dir, "--json"], env=env, check=True,
                                        capture_output=True, text=True).stdout)
    copied = summary["counts"]["restored"] + summary["counts"]["struct_written"]
    copy_seconds = summary["stages"]["replay"]["seconds"]
    banner("summary")
    rows = [("keys copied", f"{copied:,}"), ("run seconds", f"{timings['run']:.1f} (copy {copy_seconds:.1f})"),
            ("keys/s (copy)", f"{copied / copy_seconds:,.0f}"), ("verify", summary["stages"]["verify"]["state"]),
            ("SSM before", f"{before[0]}:{before[1]}"), ("SSM after cutover", after),
            ("SSM after rollback", rolled_back), ("demo seconds", f"{time.monotonic() - total_start:.0f}")]
    for name, value in rows:
        print(f"  {name:<20} {value}")


if __name__ == "__main__":
    main()
