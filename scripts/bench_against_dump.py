#!/usr/bin/env python3
"""Benchmark: `verify --against-dump` wall time and peak RSS (all processes) by key count.

Per key count: seeds the bench.py mix into a standalone source, copies it (`dump`, then `replay`) into a
3-master TLS cluster, stops the source, then runs `verify --against-dump` from each --tool-root in turn (the
same dump and target: an A/B of two checkouts) and prints seconds, peak RSS and RSS bytes per key.

    .venv/bin/python scripts/bench_against_dump.py --keys 200000 --keys 1000000 --keys 2000000 \
        [--tool-root /path/to/older/checkout] [--tool-root .] [--flush-target]

`--flush-target` empties the target before verifying: every key differs (the worst case for memory, which then
holds every difference, as the report lists them all).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
import testbed  # noqa: E402


def verify_against_dump(root: Path, target, run_dir: Path) -> dict:
    bench.TOOL_ROOT = root
    run = bench.run_tool(["verify", "--against-dump", "--run-dir", str(run_dir), "--target", target.url()])
    return {"seconds": round(run["seconds"], 2), "rss_mb": run["rss_mb"], "equal": run["summary"].get("equal")}


def one_size(keys: int, roots: list[Path], base: Path, certs: testbed.Certs, flush: bool = False) -> list[dict]:
    source = testbed.start_standalone(base / f"src-{keys}", password="bench-source-pw")
    target = testbed.start_cluster(base / f"tgt-{keys}", 3, password="bench-target-pw", certs=certs)
    run_dir = base / f"run-{keys}"
    try:
        bench.seed(source, keys)
        bench.TOOL_ROOT = bench.ROOT
        bench.run_tool(["dump", "--source", source.url(), "--run-dir", str(run_dir)])
        bench.run_tool(["replay", "--target", target.url(), "--run-dir", str(run_dir)])
        source.stop()
        if flush:
            target.flush()
        results = []
        for root in roots:
            result = {"keys": keys, "tool_root": str(root), **verify_against_dump(root, target, run_dir)}
            result["rss_bytes_per_key"] = round((result["rss_mb"] << 20) / keys, 1)
            print(json.dumps(result), flush=True)
            results.append(result)
        return results
    finally:
        for server in (source, target):
            server.stop()
        testbed.remove(run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, action="append", help="key counts (repeatable; default 200,000)")
    parser.add_argument("--tool-root", type=Path, action="append", help="checkouts to time (default: this one)")
    parser.add_argument("--flush-target", action="store_true", help="verify an emptied target (all keys differ)")
    args = parser.parse_args()
    roots = [root.resolve() for root in (args.tool_root or [bench.ROOT])]
    base = Path(tempfile.mkdtemp(prefix="redis-migrate-bench-dump-"))
    certs = testbed.Certs.make(base / "certs")
    try:
        for keys in args.keys or [200_000]:
            one_size(keys, roots, base, certs, args.flush_target)
    finally:
        testbed.remove(base)


if __name__ == "__main__":
    main()
