#!/usr/bin/env python3
"""Benchmark of `archive` and `replay --from` (not a test), against moto's S3 server on this machine.

Seeds --keys keys (bench.py's mixed set) into a standalone source, dumps them, then in the same run:
  archive        `redis-migrate archive` (hash, upload, verify every object from S3, manifest), clocked from outside
  upload_file    boto3's S3Transfer `upload_file` of the same segment files to another prefix (no verification)
  replay_local   `redis-migrate replay` from the run dir into an empty serverless-like TLS target
  replay_s3      `redis-migrate replay --from s3://...` into the same target, flushed, with a fresh run dir

    .venv/bin/python scripts/bench_archive.py [--keys 1000000] [--json]

moto keeps objects in its own process's memory: the figures compare the tool with a plain upload or a
local replay over the same loopback HTTP server, not with S3's real throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import boto3

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import bench  # noqa: E402
import testbed  # noqa: E402

BUCKET = "bench-archive"


def upload_files(run_dir: Path, prefix: str) -> float:
    """The baseline: boto3's managed upload of every segment file, one after the other."""
    s3 = boto3.client("s3")
    started = time.monotonic()
    for path in sorted((run_dir / "segments").iterdir()):
        s3.upload_file(str(path), BUCKET, f"{prefix}/{path.name}", ExtraArgs={"ServerSideEncryption": "AES256"})
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    base = testbed.scratch_dir("redis-migrate-bench-archive-")
    certs = testbed.Certs.make(base / "certs")
    source = testbed.start_standalone(base / "src", password="bench-source-pw")
    target = testbed.start_cluster(base / "tgt", 1, password="bench-target-pw", certs=certs)
    moto = testbed.MotoServer(base / "moto").start()
    os.environ.update(moto.env())
    try:
        bench.timed("seed", lambda: bench.seed(source, args.keys))
        run_dir = base / "run"
        bench.run_tool(["dump", "--source", source.url(), "--run-dir", str(run_dir)])
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_public_access_block(Bucket=BUCKET, PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True})
        uri = f"s3://{BUCKET}/tool"
        archived = bench.run_tool(["archive", "--run-dir", str(run_dir), "--to", uri])
        baseline = upload_files(run_dir, "baseline")
        local = bench.run_tool(["replay", "--target", target.url(), "--run-dir", str(run_dir)],
                               [n.client() for n in target.nodes], args.keys)
        target.flush()
        from_s3 = bench.run_tool(["replay", "--from", uri, "--target", target.url(), "--run-dir",
                                  str(base / "restore")], [n.client() for n in target.nodes], args.keys)
        result = {
            "keys": args.keys, "segments": archived["summary"]["segments"],
            "archive_mb": round(archived["summary"]["bytes"] / 2**20, 1),
            "archive_s": round(archived["seconds"], 2),
            "archive_inside_s": archived["summary"]["seconds"], "upload_file_s": round(baseline, 2),
            "archive_vs_upload_file": round(archived["seconds"] / baseline, 2),
            "archive_rss_mb": archived["rss_mb"],
            "replay_local_s": round(local["seconds"], 2), "replay_s3_s": round(from_s3["seconds"], 2),
            "replay_s3_vs_local": round(from_s3["seconds"] / local["seconds"], 2),
            "replay_s3_rss_mb": from_s3["rss_mb"], "replay_local_rss_mb": local["rss_mb"],
        }
        print(json.dumps(result) if args.json else "\n".join(f"{k:24} {v}" for k, v in result.items()))
    finally:
        moto.stop()
        target.stop()
        source.stop()
        testbed.remove(base)


if __name__ == "__main__":
    main()
