"""An app task as the storefront runs one: it reads the SSM endpoint and port ONCE at start (as ECS injects
them), connects there, and writes continuously until SIGTERM, recording every acknowledged write.

    python tests/ssm_app.py --name app1 --param-prefix /storefront/test/redis --url HOST:PORT=URL ... --log FILE
        [--shared N] [--changes N] [--rate OPS]

Each write is `SET <name>:<seq> <seq>` (a new key: an acknowledged write must be found on the cache), and with
--shared N also `SET shared:<seq % N> <name>-<seq>` (keys the other app writes too). --changes N stops after N
writes. The log (JSON lines) holds every acknowledged write [key, value] and, at exit, a summary line with the
endpoint used, the writes and the longest stall (the longest single write, in ms). The AWS endpoint comes from
the standard AWS_* variables (moto in the tests).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

import boto3
import redis


def endpoint(prefix: str) -> str:
    ssm = boto3.client("ssm")
    host = ssm.get_parameter(Name=f"{prefix}/endpoint")["Parameter"]["Value"]
    port = ssm.get_parameter(Name=f"{prefix}/port")["Parameter"]["Value"]
    return f"{host}:{port}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--param-prefix", required=True)
    parser.add_argument("--url", action="append", required=True, help="HOST:PORT=redis URL (credentials, TLS)")
    parser.add_argument("--log", required=True)
    parser.add_argument("--shared", type=int, default=0)
    parser.add_argument("--changes", type=int, default=0)
    parser.add_argument("--rate", type=float, default=1000.0)
    args = parser.parse_args()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    where = endpoint(args.param_prefix)
    urls = dict(item.split("=", 1) for item in args.url)
    client = redis.Redis.from_url(urls[where], socket_timeout=30)
    longest, seq, interval = 0.0, 0, 1.0 / args.rate
    with open(args.log, "w") as log:
        log.write(json.dumps({"endpoint": where}) + "\n")
        log.flush()
        while not stop and (not args.changes or seq < args.changes):
            seq += 1
            started = time.monotonic()
            writes = [(f"{args.name}:{seq}", str(seq))]
            if args.shared:
                writes.append((f"shared:{seq % args.shared}", f"{args.name}-{seq}"))
            for key, value in writes:
                client.set(key, value)
                log.write(json.dumps([key, value]) + "\n")
            took = time.monotonic() - started
            longest = max(longest, took)
            if seq % 100 == 0:
                log.flush()
            time.sleep(max(interval - took, 0))
        log.write(json.dumps({"summary": True, "endpoint": where, "writes": seq,
                              "longest_stall_ms": int(longest * 1000)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
