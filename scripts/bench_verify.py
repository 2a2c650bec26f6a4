#!/usr/bin/env python3
"""Benchmark of a full verify: N seeded keys copied from a standalone source into a serverless-like
TLS target with the data path's `run`, then verified (both sides read at once).

    python scripts/bench_verify.py --keys 1000000

Prints one JSON line: seconds and keys/s for the copy and for the verify, and their ratio.
`bench_verify(source, target, keys)` is importable, for scripts/bench.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import seed_data  # noqa: E402
import testbed  # noqa: E402

from migrate.endpoints import Endpoint, discover  # noqa: E402
from migrate.state import RunDir  # noqa: E402
from migrate.verify import VerifyOptions, run_verify  # noqa: E402


def copy_seconds(source_url: str, target_url: str, run_dir: Path) -> float:
    from click.testing import CliRunner

    from migrate.cli import cli
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["run", "--source", source_url, "--target", target_url, "--run-dir",
                                      str(run_dir), "--json"])
    if result.exit_code != 0:
        raise SystemExit(f"copy failed: {result.output}")
    return time.monotonic() - started


def verify_seconds(source_url: str, target_url: str, run_dir: Path) -> tuple[float, dict]:
    source = discover(Endpoint.from_url("source", source_url))
    target = discover(Endpoint.from_url("target", target_url))
    started = time.monotonic()
    result = run_verify(source, target, RunDir(run_dir), VerifyOptions())
    return time.monotonic() - started, result.to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--no-copy-timing", action="store_true", help="copy, but do not report its time")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-verify-"))
    certs = testbed.Certs.make(base / "certs")
    source = testbed.start_standalone(base)
    target = testbed.start_serverless_like(base, certs)
    try:
        seed_data.seed(source.client(), args.keys, seed=1, big_keys=True, short_ttl_keys=0)
        copy = copy_seconds(source.url(), target.url(), base / "run")
        seconds, result = verify_seconds(source.url(), target.url(), base / "run")
        keys = result["counts"]["source"]["keys"] + result["counts"]["target"]["keys"]
        print(json.dumps({"keys": args.keys, "copy_seconds": round(copy, 2), "verify_seconds": round(seconds, 2),
                          "verify_keys_per_second_both_sides": round(keys / seconds),
                          "verify_to_copy_ratio": round(seconds / copy, 2), "equal": result["equal"]}))
    finally:
        source.stop()
        target.stop()
        testbed.remove(base)


if __name__ == "__main__":
    main()
