#!/usr/bin/env python3
"""Benchmark: redis-migrate against a naive copier and redis-cli --pipe, in the same invocation.

Seeds N generator-like keys into a standalone source, in one of two mixes:
  mixed   70% 100-byte strings; the rest small hashes, lists, sets and zsets; 30% with TTLs
  tiny    mostly strings of 0-300 bytes (per-key costs weigh most here); 30% with TTLs
then times, into a 3-master TLS cluster:
  naive   a pipelined SCAN/DUMP -> RESTORE copier through redis-py's cluster pipeline (below)
  tool    `redis-migrate run`, clocked from outside as a user waits for it: process start until the
          target holds every key (copy), and until the process exits (with the closing verify); the peak
          of the summed RSS of all its processes (parent, dump child, verify workers)
  verify  `redis-migrate verify` of source vs target, when the verify stage is there
and, into one TLS node, `redis-cli --pipe` of the same RESTORE commands: the single-client ceiling.

    .venv/bin/python scripts/bench.py --keys 1000000 [--rss-keys 100000] [--mix mixed|tiny]... [--skip-naive]
        [--mode auto|struct]...
    .venv/bin/python scripts/bench.py --keys 10000000 --rss-keys 1000000 --skip-naive --skip-pipe   # flatness

    .venv/bin/python scripts/bench.py --workers-keys 300000   # 3-master source, --workers 1 vs 2

`--workers-keys N` seeds N keys on a 3-master source and times `run`, `dump` and `replay` with --workers 1
and 2: the copy's wall time clocked from outside, and CPU seconds per million keys of the dump, the replay
(their whole process trees), the source servers and the target servers (INFO cpu), with the load average.

`--mode struct` (repeatable with `--mode auto`) times `run --mode struct` too, the type-by-type path, into the
same (flushed) target, and reports its keys/s against auto's (`struct_vs_auto`: a share of RESTORE's speed).

Each result also gives seconds per million keys (copy, verify), the run dir's bytes per key, and the
peak RSS of the copy stages (until the target holds every key) and of the separate verify (children
included). Seeding is streamed, so 10M keys need only the servers' memory (about 1.2 GB a side).

`--mix big` seeds big values instead (100 x 5 MB and 4,000 x 100 KB, scaled by --keys / 4100) and
measures what `dump` costs the source: the longest wait of a client that GETs and PINGs it meanwhile,
the growth of its used_memory_peak, and the tool's peak RSS. `--tool-root DIR` runs redis-migrate
from another checkout (a `git worktree` of an older commit) for an A/B on the same machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import testbed  # noqa: E402
from migrate.net.keyspace import key_slot  # noqa: E402
from migrate.net.wire import Wire, pack, pack_restore  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOOL_ROOT = ROOT  # --tool-root: whose redis-migrate is timed
MB = 1 << 20


def naive_copy(source: redis.Redis, target: redis.RedisCluster, batch: int = 1000) -> int:
    """The baseline: what a careful engineer writes in an afternoon with redis-py."""
    copied = 0
    cursor = 0
    while True:
        cursor, keys = source.scan(cursor, count=batch)
        if keys:
            read = source.pipeline(transaction=False)
            for key in keys:
                read.pttl(key)
                read.dump(key)
            replies = read.execute()
            write = target.pipeline(transaction=False)
            for key, ttl, payload in zip(keys, replies[0::2], replies[1::2]):
                if payload is not None and ttl != -2:
                    write.restore(key, max(ttl, 0), payload, replace=True)
                    copied += 1
            write.execute()
        if cursor == 0:
            return copied


def seed(server, keys: int, mix: str = "mixed", seed_number: int = 1) -> None:
    """Fast seeding with hand-packed pipelines: the benchmark's data set, deterministic. `server` may be a
    cluster: each key goes to the master that owns its slot."""
    rng = random.Random(seed_number)
    nodes = getattr(server, "nodes", None) or [server]
    owners = _slot_owners(nodes) if len(nodes) > 1 else None
    wires = [Wire(_endpoint(node.url()), "127.0.0.1", node.port) for node in nodes]
    batches: list[list[bytes]] = [[] for _ in nodes]
    for index in range(keys):
        kind = rng.random()
        key = b"bench:%d" % index
        owner = owners[key_slot(key)] if owners else 0
        batch = batches[owner]
        if mix == "tiny" and kind < 0.92:
            batch.append(pack(b"SET", key, rng.randbytes(rng.randrange(0, 151)).hex().encode()))
        elif mix == "tiny":
            batch.append(pack(b"HSET", key, b"f", b"%d" % rng.randrange(10**6)))
        elif kind < 0.70:
            batch.append(pack(b"SET", key, rng.randbytes(50).hex().encode()))
        elif kind < 0.78:
            batch.append(pack(b"HSET", key, *[b"f%d" % i if j == 0 else b"v%d" % rng.randrange(10**6)
                                              for i in range(5) for j in range(2)]))
        elif kind < 0.86:
            batch.append(pack(b"RPUSH", key, *[b"item-%d" % rng.randrange(10**6) for _ in range(8)]))
        elif kind < 0.93:
            batch.append(pack(b"SADD", key, *[b"m%d" % rng.randrange(10**6) for _ in range(8)]))
        else:
            batch.append(pack(b"ZADD", key, *[part for _ in range(8)
                                               for part in (b"%f" % rng.random(), b"p%d" % rng.randrange(10**6))]))
        if rng.random() < 0.30:
            batch.append(pack(b"PEXPIRE", key, b"%d" % rng.randrange(3_600_000, 86_400_000)))
        if len(batch) >= 5000:
            batches[owner] = _send(wires[owner], batch)
    for wire, batch in zip(wires, batches):
        _send(wire, batch)
        wire.close()


def _slot_owners(nodes: list) -> list[int]:
    """slot -> index of the node (of `nodes`) that owns it, from CLUSTER SLOTS."""
    ports = {node.port: index for index, node in enumerate(nodes)}
    owners = [0] * 16384
    for start, end, master, *_ in nodes[0].client().execute_command("CLUSTER", "SLOTS"):
        owners[start:end + 1] = [ports[int(master[1])]] * (end - start + 1)
    return owners


def _send(wire: Wire, commands: list[bytes]) -> list[bytes]:
    """One pipelined round of seeding commands; returns a fresh, empty batch."""
    if commands:
        wire.send(b"".join(commands))
        wire.read(len(commands))
    return []


def _endpoint(url: str):
    from migrate.net.endpoints import Endpoint
    return Endpoint.from_url("source", url)


def timed(label: str, func) -> tuple[float, object]:
    started = time.monotonic()
    result = func()
    seconds = time.monotonic() - started
    print(f"  {label:<28} {seconds:8.2f} s", flush=True)
    return seconds, result


class Watch:
    """Samples, while a command runs: the summed RSS and PSS of its process tree, and (given a target) when the
    target first holds `expected` keys. Every 20 ms, from outside the tool."""

    def __init__(self, pid: int, target: list[redis.Redis] | None = None, expected: int = 0) -> None:
        self.process = psutil.Process(pid)
        self.target, self.expected = target or [], expected
        self.started = time.monotonic()
        self.peak_rss = self.peak_pss = 0
        self.copy_peak_rss = 0  # until the target holds every key: the copy stages alone
        self.all_keys_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            try:
                tree = [self.process, *self.process.children(recursive=True)]
                memory = [p.memory_full_info() for p in tree if p.is_running()]
                self.peak_rss = max(self.peak_rss, sum(m.rss for m in memory))
                if self.all_keys_at is None:
                    self.copy_peak_rss = self.peak_rss
                self.peak_pss = max(self.peak_pss, sum(m.pss for m in memory))  # pages shared after fork once
            except psutil.Error:
                pass
            if self.target and self.all_keys_at is None and sum(c.dbsize() for c in self.target) >= self.expected:
                self.all_keys_at = time.monotonic() - self.started

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def tool_command(args: list[str]) -> tuple[list[str], dict]:
    """redis-migrate from TOOL_ROOT, with this interpreter: the command and its environment."""
    env = {**os.environ, "PYTHONPATH": str(TOOL_ROOT), "TQDM_DISABLE": "1"}
    return [sys.executable, "-m", "migrate.cli", *args, "--json"], env


def run_tool(args: list[str], target: list[redis.Redis] | None = None, expected: int = 0) -> dict:
    """One CLI invocation clocked from outside: total seconds, seconds until the target held every key,
    and the peak of the summed RSS of its processes."""
    command, env = tool_command(args)
    process = subprocess.Popen(command, env=env, cwd=TOOL_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    watch = Watch(process.pid, target, expected)
    out, err = process.communicate()
    seconds = time.monotonic() - watch.started
    watch.stop()
    if process.returncode not in (0, 1):
        raise SystemExit(f"redis-migrate {args[0]} failed: {err}")
    return {"seconds": seconds, "copy_seconds": watch.all_keys_at, "rss_mb": watch.peak_rss >> 20,
            "copy_rss_mb": watch.copy_peak_rss >> 20, "pss_mb": watch.peak_pss >> 20,
            "summary": json.loads(out or "{}")}


def tree_bytes(path: Path) -> int:
    """Bytes of every file under a directory (a run dir: segments and ledgers)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def redis_cli_pipe(run_dir: Path, node: testbed.RedisServer, certs: testbed.Certs) -> float:
    """Mass insertion of the dump's RESTORE commands into one TLS node with redis-cli --pipe."""
    from migrate.datapath.segments import read_segment
    from migrate.datapath.store import list_segments
    from migrate.rundir import RunDir
    stream = run_dir.parent / "restore.resp"
    with open(stream, "wb") as out:
        for path in list_segments(RunDir(run_dir)):
            out.write(b"".join(pack_restore(r.key, r.expire_at, r.payload) for r in read_segment(path)))
    node.client().flushall()
    command = ["redis-cli", "--tls", "--cacert", str(certs.ca), "-p", str(node.port), "--pipe"]
    env = {**os.environ, "REDISCLI_AUTH": node.password or ""}
    started = time.monotonic()
    with open(stream, "rb") as data:
        subprocess.run(command, stdin=data, check=True, capture_output=True, env=env)
    return time.monotonic() - started


def bench(keys: int, mix: str, base: Path, certs: testbed.Certs, skip_naive: bool,
          modes: tuple[str, ...] = ("auto",), skip_pipe: bool = False) -> dict:
    print(f"\n== {keys:,} keys, {mix} mix", flush=True)
    base = base / mix
    source = testbed.start_standalone(base / f"src-{keys}", password="bench-source-pw")
    target = testbed.start_cluster(base / f"tgt-{keys}", 3, password="bench-target-pw", certs=certs)
    single = testbed.start_cluster(base / f"one-{keys}", 1, password="bench-target-pw", certs=certs)
    try:
        timed("seed", lambda: seed(source, keys, mix))
        result: dict = {"keys": source.client().dbsize(), "mix": mix}
        if not skip_naive:
            result["naive_s"], _ = timed("naive copier", lambda: naive_copy(source.client(), target.cluster_client()))
            target.flush()
        run_dir = base / f"run-{keys}"
        for mode in modes:
            if mode == "auto":
                continue
            run = run_tool(["run", "--source", source.url(), "--target", target.url(), "--run-dir",
                            str(base / f"run-{keys}-{mode}"), "--mode", mode],
                           [node.client() for node in target.nodes], result["keys"])
            print(f"  {'redis-migrate run --mode ' + mode:<28} {run['seconds']:8.2f} s   (every key on the target "
                  f"after {run['copy_seconds']:.2f} s, then verify)", flush=True)
            result[f"{mode}_s"] = run["copy_seconds"]
            result[f"{mode}_keys_per_s"] = round(result["keys"] / run["copy_seconds"])
            target.flush()
        run = run_tool(["run", "--source", source.url(), "--target", target.url(), "--run-dir", str(run_dir)],
                       [node.client() for node in target.nodes], result["keys"])
        copy = run["copy_seconds"]
        print(f"  {'redis-migrate run':<28} {run['seconds']:8.2f} s   (every key on the target after {copy:.2f} s,"
              f" then verify)   peak RSS {run['rss_mb']} MB, PSS {run['pss_mb']} MB (all processes)", flush=True)
        result.update(tool_s=copy, run_total_s=run["seconds"], tool_rss_mb=run["rss_mb"], tool_pss_mb=run["pss_mb"],
                      copy_rss_mb=run["copy_rss_mb"], restored=run["summary"].get("restored"),
                      run_verify_equal=run["summary"].get("verify", {}).get("equal"),
                      copy_s_per_mkeys=round(copy / result["keys"] * 1e6, 2),
                      run_dir_bytes_per_key=round(tree_bytes(run_dir) / result["keys"], 1))
        if "verify" in _commands():
            verify = run_tool(["verify", "--source", source.url(), "--target", target.url()])
            print(f"  {'redis-migrate verify':<28} {verify['seconds']:8.2f} s   peak RSS {verify['rss_mb']} MB",
                  flush=True)
            result.update(verify_s=verify["seconds"], verify_rss_mb=verify["rss_mb"],
                          verify_equal=verify["summary"].get("equal"),
                          verify_s_per_mkeys=round(verify["seconds"] / result["keys"] * 1e6, 2),
                          verify_vs_copy=round(verify["seconds"] / copy, 2))
        if not skip_pipe:
            result["redis_cli_pipe_s"], _ = timed("redis-cli --pipe (1 node)",
                                                  lambda: redis_cli_pipe(run_dir, single.first, certs))
        return result
    finally:
        for server in (source, target, single):
            server.stop()


def seed_big(server: testbed.RedisServer, scale: float) -> int:
    """The issue's hostile mix: 5 MB and 100 KB incompressible values, a quarter with TTLs, written a few
    at a time (so that seeding leaves no memory peak of its own). Returns the bytes written."""
    wire = Wire(_endpoint(server.url()), "127.0.0.1", server.port)
    written = 0
    for prefix, count, size, per_round in ((b"big", 100, 5 * MB, 1), (b"mid", 4000, 100 << 10, 20)):
        commands = []
        for index in range(max(1, round(count * scale))):
            commands.append(pack(b"SET", b"%s:%d" % (prefix, index), os.urandom(size),
                                 *((b"PX", b"3600000") if index % 4 == 0 else ())))
            written += size
            if len(commands) == per_round:
                commands = _send(wire, commands)
        _send(wire, commands)
    wire.call(b"SET", b"probe:small", b"x" * 100)
    wire.close()
    return written


def _probe(url: str, stop, longest) -> None:
    """An application's client, in a process of its own: GET and PING in a loop, keeping the longest wait."""
    client = redis.Redis.from_url(url, socket_timeout=60)
    while not stop.is_set():
        for request in (lambda: client.get("probe:small"), client.ping):
            started = time.perf_counter()
            request()
            longest.value = max(longest.value, time.perf_counter() - started)
        time.sleep(0.002)


def _cpu_seconds(client: redis.Redis) -> float:
    cpu = client.info("cpu")
    return cpu["used_cpu_user"] + cpu["used_cpu_sys"]


def bench_big(keys: int, base: Path) -> dict:
    """What `dump` costs the source on big values: its longest pause, memory peak growth, the tool's RSS."""
    scale = keys / 4100
    print(f"\n== big values: {round(100 * scale)} x 5 MB + {round(4000 * scale)} x 100 KB", flush=True)
    source = testbed.start_standalone(base / f"big-src-{keys}", password="bench-source-pw")
    try:
        _, written = timed("seed", lambda: seed_big(source, scale))
        client = source.client()
        seeded, cpu_before = client.info("memory")["used_memory"], _cpu_seconds(client)
        context = multiprocessing.get_context("fork")
        stop, longest = context.Event(), context.Value("d", 0.0)
        probe = context.Process(target=_probe, args=(source.url(), stop, longest), daemon=True)
        probe.start()
        command, env = tool_command(["dump", "--source", source.url(), "--run-dir", str(base / f"big-run-{keys}")])
        started = time.monotonic()
        dumping = subprocess.Popen(command, env=env, cwd=TOOL_ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, preexec_fn=lambda: os.nice(10))
        _, status, usage = os.wait4(dumping.pid, 0)
        seconds = time.monotonic() - started
        stop.set()
        probe.join()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"redis-migrate dump failed: {dumping.stderr.read().decode()[-2000:]}")
        result = {"mix": "big", "dump_s": round(seconds, 2), "dump_mb_per_s": round(written / MB / seconds),
                  "source_longest_wait_ms": round(longest.value * 1000),
                  "source_peak_growth_mb": round((client.info("memory")["used_memory_peak"] - seeded) / MB),
                  "tool_rss_mb": usage.ru_maxrss // 1024,
                  "source_cpu_share": round((_cpu_seconds(client) - cpu_before) / seconds, 2)}
        print(f"  {'redis-migrate dump':<28} {seconds:8.2f} s   longest source wait "
              f"{result['source_longest_wait_ms']} ms, source peak +{result['source_peak_growth_mb']} MB, "
              f"tool RSS {result['tool_rss_mb']} MB", flush=True)
        return result
    finally:
        source.stop()


def clocked(args: list[str], target: list[redis.Redis] | None = None, expected: int = 0) -> dict:
    """One CLI invocation clocked from outside: wall seconds, seconds until the target held every key, and the
    CPU seconds of its whole process tree (wait4: the tool and every child it reaped)."""
    command, env = tool_command([str(a) for a in args])
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, env=env, cwd=TOOL_ROOT, stdout=subprocess.DEVNULL, stderr=errors)
        watch = Watch(process.pid, target, expected)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - watch.started
        watch.stop()
        if os.waitstatus_to_exitcode(status) not in (0, 1):
            errors.seek(0)
            raise SystemExit(f"redis-migrate {args[0]} failed: {errors.read().decode()[-2000:]}")
    return {"seconds": round(seconds, 2), "copy_seconds": watch.all_keys_at and round(watch.all_keys_at, 2),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "rss_mb": watch.peak_rss >> 20}


def _servers_cpu(cluster) -> float:
    return sum(_cpu_seconds(node.client()) for node in cluster.nodes)


def bench_workers(keys: int, base: Path, certs: testbed.Certs, mix: str = "mixed") -> dict:
    """A 3-master source into a 3-master TLS cluster with --workers 1 and 2: `run` (copy clocked from outside),
    then `dump` and `replay` alone, each with its CPU seconds and the servers' (INFO cpu), per million keys."""
    print(f"\n== workers: {keys:,} keys, {mix} mix, 3-master source", flush=True)
    source = testbed.start_cluster(base / f"wsrc-{keys}", 3, password="bench-source-pw")
    target = testbed.start_cluster(base / f"wtgt-{keys}", 3, password="bench-target-pw", certs=certs)
    try:
        timed("seed", lambda: seed(source, keys, mix))
        count = sum(node.client().dbsize() for node in source.nodes)
        per_m = 1e6 / count
        result: dict = {"keys": count, "mix": mix, "cores": os.cpu_count(), "load_before": os.getloadavg()[0]}
        for workers in (1, 2):
            target.flush()
            run = clocked(["run", "--source", source.url(), "--target", target.url(), "--run-dir",
                           base / f"wrun-{keys}-{workers}", "--workers", workers],
                          [node.client() for node in target.nodes], count)
            target.flush()
            run_dir = base / f"wdump-{keys}-{workers}"
            source_cpu = _servers_cpu(source)
            dump = clocked(["dump", "--source", source.url(), "--run-dir", run_dir, "--workers", workers])
            source_cpu = _servers_cpu(source) - source_cpu
            target_cpu = _servers_cpu(target)
            replay = clocked(["replay", "--target", target.url(), "--run-dir", run_dir, "--workers", workers])
            target_cpu = _servers_cpu(target) - target_cpu
            row = {"copy_s": run["copy_seconds"], "run_total_s": run["seconds"], "run_cpu_s": run["cpu_s"],
                   "dump_s": dump["seconds"], "replay_s": replay["seconds"],
                   "cpu_s_per_mkeys": {"dump": round(dump["cpu_s"] * per_m, 2),
                                       "replay": round(replay["cpu_s"] * per_m, 2),
                                       "source_servers": round(source_cpu * per_m, 2),
                                       "target_servers": round(target_cpu * per_m, 2)},
                   "load": os.getloadavg()[0]}
            print(f"  --workers {workers}: copy {row['copy_s']} s (run {row['run_total_s']} s with its verify), dump "
                  f"{row['dump_s']} s, replay {row['replay_s']} s; CPU s per M keys {row['cpu_s_per_mkeys']}; "
                  f"load {row['load']:.1f}", flush=True)
            result[f"workers_{workers}"] = row
        one, two = result["workers_1"], result["workers_2"]
        result["copy_speedup_2_vs_1"] = round(one["copy_s"] / two["copy_s"], 2) if one["copy_s"] and two["copy_s"] \
            else None
        result["dump_speedup_2_vs_1"] = round(one["dump_s"] / two["dump_s"], 2)
        return result
    finally:
        source.stop()
        target.stop()


def _commands() -> set[str]:
    return set(json.loads(subprocess.run([sys.executable, "-c", "import json, migrate.cli as c; "
                                          "print(json.dumps(list(c.cli.commands)))"], capture_output=True,
                                         text=True, env=tool_command([])[1], check=True).stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=None, help="keys to seed (default 1,000,000; big mix 4,100)")
    parser.add_argument("--rss-keys", type=int, default=100_000, help="a second, smaller run for RSS flatness")
    parser.add_argument("--mix", choices=("mixed", "tiny", "big"), action="append",
                        help="data mix (repeatable; default: mixed and tiny); big: 5 MB and 100 KB values, and what "
                             "the dump costs the source")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-pipe", action="store_true", help="skip redis-cli --pipe (at 10M keys its stream file "
                        "is a few GB)")
    parser.add_argument("--tool-root", type=Path, default=ROOT, help="time redis-migrate from this checkout")
    parser.add_argument("--workers-keys", type=int, default=None, metavar="N",
                        help="only the --workers 1 vs 2 run: N keys on a 3-master source (bench_workers)")
    parser.add_argument("--mode", choices=("auto", "struct"), action="append",
                        help="run's --mode to time (repeatable; default auto): struct is the type-by-type path")
    args = parser.parse_args()
    global TOOL_ROOT
    TOOL_ROOT = args.tool_root.resolve()
    base = Path(tempfile.mkdtemp(prefix="redis-migrate-bench-"))
    mixes = args.mix or ["mixed", "tiny"]
    if "big" in mixes:
        print(json.dumps(bench_big(args.keys or 4100, base)))
        mixes.remove("big")
        if not mixes:
            testbed.remove(base)
            return
    if args.workers_keys:
        print(json.dumps(bench_workers(args.workers_keys, base, testbed.Certs.make(base / "certs"))))
        testbed.remove(base)
        return
    args.keys = args.keys or 1_000_000
    certs = testbed.Certs.make(base / "certs")
    modes = tuple(args.mode or ["auto"])
    results = [bench(n, mix, base, certs, args.skip_naive, modes, args.skip_pipe) for mix in mixes
               for n in sorted({args.rss_keys, args.keys}) if n]
    print("\n== results")
    for result in results:
        if "naive_s" in result:
            result["tool_vs_naive"] = round(result["tool_s"] / result["naive_s"], 3)
            if "verify_s" in result:
                result["verify_vs_naive"] = round(result["verify_s"] / result["naive_s"], 3)
        if "redis_cli_pipe_s" in result:
            result["tool_vs_redis_cli"] = round(result["tool_s"] / result["redis_cli_pipe_s"], 2)
        result["tool_keys_per_s"] = round(result["keys"] / result["tool_s"])
        if "struct_s" in result:
            result["struct_vs_auto"] = round(result["struct_keys_per_s"] / result["tool_keys_per_s"], 3)
        print(json.dumps(result))
    testbed.remove(base)


if __name__ == "__main__":
    main()
