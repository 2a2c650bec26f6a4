#!/usr/bin/env python3
"""Benchmark of `redis-migrate sync` (not a test): lag while following, stop-to-exit, RSS, and source CPU.

Seeds --keys keys (bench.py's mixed set) into a standalone source, starts an app (tests/appwriter.py) writing
at --rate ops/s, and syncs into a serverless-like TLS target:
  baseline   the app alone for --baseline-seconds: the source's CPU (INFO used_cpu_user+sys) per 1,000 writes
  copy       sync starts (--enable-notifications), seconds until `status` says following
  follow     --follow-seconds with the app writing; meanwhile
               lag e2e   a probe SETs a fresh key on the source every 20 ms and watches the target (MGET every
                         5 ms): ack on the source -> visible on the target, p50/p99/max over every probe
               lag_ms    sync's own `lag_ms` from sync.json, sampled every 100 ms
               RSS       sync's process tree, every second (flat or growing: first vs last third)
               CPU       the source's CPU per 1,000 changes during the follow, and minus the baseline: sync's share
  stop       the app stops, SIGTERM to sync: seconds until it exits (and its exit code)
  check      (--check) the independent snapshot of both sides, and every acknowledged witness on the target

    .venv/bin/python scripts/bench_sync.py [--keys 1000000] [--rate 5000] [--follow-seconds 60] [--json]

Goals of issue 12: p99 lag <= 1 s at 5,000 ops/s on this 2-core machine; stop-to-exit <= 2 s; RSS flat.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
import bench  # noqa: E402
import testbed  # noqa: E402
from appwriter import AppWriter, missing_witnesses  # noqa: E402

PROBE_EVERY_S = 0.02
WATCH_EVERY_S = 0.005
STEADY_AFTER_S = 5.0  # the first seconds after the proof pass drain the backlog it left


def percentiles(values: list[float]) -> dict:
    ordered = sorted(values)
    if not ordered:
        return {}
    pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)  # noqa: E731
    return {"p50": pick(0.50), "p99": pick(0.99), "max": round(ordered[-1], 1), "samples": len(ordered)}


def cpu_seconds(client: redis.Redis) -> float:
    cpu = client.info("cpu")
    return cpu["used_cpu_user"] + cpu["used_cpu_sys"]


class LagProbe:
    """End-to-end lag: SET `lagprobe:<n>` on the source (ack time), then MGET the outstanding ones on the
    target until each is there (visible time). Two threads, so a slow target never delays the next probe."""

    def __init__(self, source: redis.Redis, target: redis.Redis) -> None:
        self.source, self.target = source, target
        self.outstanding: dict[str, float] = {}
        self.lags_ms: list[float] = []
        self.timed: list[tuple[float, float]] = []  # (seconds into the follow, lag ms)
        self.spikes: list[tuple[float, float]] = []  # (seconds into the follow, lag ms) over 500 ms
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._write, daemon=True),
                        threading.Thread(target=self._watch, daemon=True)]
        self.sequence = 0

    def start(self) -> LagProbe:
        for thread in self.threads:
            thread.start()
        return self

    def _write(self) -> None:
        while not self.stop.wait(PROBE_EVERY_S):
            self.sequence += 1
            key = f"lagprobe:{self.sequence}"
            self.source.set(key, "1")
            acked = time.monotonic()
            with self.lock:
                self.outstanding[key] = acked

    def _watch(self) -> None:
        while not self.stop.wait(WATCH_EVERY_S):
            with self.lock:
                keys = list(self.outstanding)
            if not keys:
                continue
            seen = time.monotonic()
            pipe = self.target.pipeline(transaction=False)  # GETs, not MGET: the target is in cluster mode
            for key in keys:
                pipe.get(key)
            values = pipe.execute()
            with self.lock:
                for key, value in zip(keys, values):
                    if value is not None:
                        acked = self.outstanding.pop(key)
                        self.lags_ms.append(max(0.0, (seen - acked) * 1000))
                        self.timed.append((acked - self.started, self.lags_ms[-1]))
                        if self.lags_ms[-1] > 500:
                            self.spikes.append((round(acked - self.started, 2), round(self.lags_ms[-1])))

    def finish(self) -> dict:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        steady = [lag for at, lag in self.timed if at >= STEADY_AFTER_S]
        return {**percentiles(self.lags_ms), f"steady_after_{STEADY_AFTER_S:.0f}s": percentiles(steady),
                "never_seen": len(self.outstanding),
                "over_1s": sum(lag > 1000 for lag in self.lags_ms), "spikes_over_500ms": self.spikes[:40]}


class Sampler:
    """sync.json's lag_ms every 100 ms, and the RSS of sync's process tree every second."""

    def __init__(self, run_dir: Path, pid: int) -> None:
        self.path = run_dir / "sync.json"
        self.process = psutil.Process(pid)
        self.lag_ms: list[float] = []
        self.states: dict[str, int] = {}
        self.by_state: dict[str, list[float]] = {}
        self.rss_mb: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.started = time.monotonic()

    def start(self) -> Sampler:
        self.thread.start()
        return self

    def _loop(self) -> None:
        tick = 0
        while not self.stop.wait(0.1):
            tick += 1
            status = read_sync(self.path)
            lag = status.get("lag_ms")
            state = status.get("state", "?")
            self.states[state] = self.states.get(state, 0) + 1
            if isinstance(lag, int | float):
                self.lag_ms.append(lag)
                self.by_state.setdefault(state, []).append(lag)
            if tick % 10 == 0:
                try:
                    tree = [self.process, *self.process.children(recursive=True)]
                    rss = sum(p.memory_info().rss for p in tree if p.is_running()) / (1 << 20)
                    self.rss_mb.append((round(time.monotonic() - self.started, 1), round(rss, 1)))
                except psutil.Error:
                    pass

    def finish(self) -> dict:
        self.stop.set()
        self.thread.join(5)
        rss = [mb for _, mb in self.rss_mb]
        third = max(1, len(rss) // 3)
        return {"lag_ms_status": percentiles(self.lag_ms), "state_samples": self.states,
                "lag_ms_status_by_state": {state: percentiles(lags) for state, lags in self.by_state.items()},
                "rss_mb": {"first_third_avg": round(sum(rss[:third]) / third, 1) if rss else None,
                           "last_third_avg": round(sum(rss[-third:]) / third, 1) if rss else None,
                           "max": max(rss) if rss else None, "series": self.rss_mb}}


def read_sync(path: Path) -> dict:
    """sync.json as written by the running sync (through RunDir: checksummed JSON), or {} mid-write."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("data", data) if isinstance(data, dict) else {}


def sync_status(run_dir: Path) -> dict:
    command, env = bench.tool_command(["status", "--run-dir", str(run_dir)])
    done = subprocess.run(command, env=env, cwd=bench.TOOL_ROOT, capture_output=True, text=True, timeout=60)
    try:
        return json.loads(done.stdout).get("sync") or {}
    except ValueError:
        return {}


def following(status: dict) -> bool:
    """Following with the proof pass done: `state` reads `following` for a moment between the copy and the
    proof pass (a full verify with repair), which is not the steady state to measure."""
    return status.get("state") == "following" and bool((status.get("proof") or {}).get("verified_at"))


def wait_following(process: subprocess.Popen, run_dir: Path, timeout: float, err: Path) -> None:
    deadline = time.monotonic() + timeout
    while not following(sync_status(run_dir)):
        if process.poll() is not None:
            raise SystemExit(f"sync exited {process.returncode} before following:\n{err.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"sync not following after {timeout}s:\n{err.read_text()[-3000:]}")
        time.sleep(0.5)


def stop_during_proof(sync: subprocess.Popen, run_dir: Path, timeout: float, result: dict) -> dict:
    """SIGTERM once the proof pass (the verify after the copy) is running: how long the stop then takes."""
    deadline = time.monotonic() + timeout
    while read_sync(run_dir / "sync.json").get("state") != "reconciling":
        if sync.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("sync never reached its proof pass")
        time.sleep(0.05)
    time.sleep(1.0)  # well inside the pass
    stop_at = time.monotonic()
    sync.send_signal(signal.SIGTERM)
    code = sync.wait(600)
    result["stop_during_proof"] = {"seconds_to_exit": round(time.monotonic() - stop_at, 2), "exit_code": code}
    print(f"  stop during the proof pass: {result['stop_during_proof']}", flush=True)
    return result


def run(args: argparse.Namespace, base: Path) -> dict:
    certs = testbed.Certs.make(base / "certs")
    source = testbed.start_standalone(base / "source", password="bench-source-pw")
    target = testbed.start_serverless_like(base / "target", certs, password="bench-target-pw")
    writer = sync = None
    result: dict = {"keys": args.keys, "rate": args.rate}
    try:
        seconds, _ = bench.timed(f"seed {args.keys:,} keys", lambda: bench.seed(source, args.keys))
        result["seed_seconds"] = round(seconds, 1)
        client = source.client()

        writer = AppWriter(base / "baseline.jsonl", url=source.url(), rate=args.rate, prefix="base").start()
        cpu0, t0, acks0 = cpu_seconds(client), time.monotonic(), writer.lines()
        time.sleep(args.baseline_seconds)
        cpu1, t1, acks1 = cpu_seconds(client), time.monotonic(), writer.lines()
        baseline = writer.stop().summary
        per_1000_alone = (cpu1 - cpu0) / max(1, acks1 - acks0) * 1000
        result["baseline"] = {"writer_rate": round((acks1 - acks0) / (t1 - t0)), "source_cpu_ms_per_1000_writes":
                              round(per_1000_alone * 1000, 2), "writer": baseline}
        print(f"  baseline: source CPU {per_1000_alone * 1000:.1f} ms per 1,000 writes (app alone)", flush=True)

        writer = AppWriter(base / "writes.jsonl", url=source.url(), rate=args.rate, prefix="app").start()
        run_dir = base / "run"
        command, env = bench.tool_command(["sync", "--source", source.url(), "--target", target.url(),
                                           "--run-dir", str(run_dir), "--enable-notifications"])
        command.remove("--json")
        err = base / "sync.err"
        started = time.monotonic()
        sync = subprocess.Popen(command, env=env, cwd=bench.TOOL_ROOT, stdout=open(base / "sync.out", "w"),
                                stderr=open(err, "w"), preexec_fn=testbed.die_with_parent)
        before_following = Sampler(run_dir, sync.pid).start()
        if args.stop_during_proof:
            return stop_during_proof(sync, run_dir, args.copy_timeout, result)
        wait_following(sync, run_dir, args.copy_timeout, err)
        result["copy_seconds"] = round(time.monotonic() - started, 1)
        copy_samples = before_following.finish()
        result["until_following"] = {"lag_ms_status_by_state": copy_samples["lag_ms_status_by_state"],
                                     "rss_mb_max": copy_samples["rss_mb"]["max"]}
        print(f"  copy until following: {result['copy_seconds']} s", flush=True)

        target_client = target.first.client()
        probe = LagProbe(source.client(), target_client).start()
        sampler = Sampler(run_dir, sync.pid).start()
        cpu0, acks0, status0 = cpu_seconds(client), writer.lines(), sync_status(run_dir)
        t0 = time.monotonic()
        result["load_average_at_follow_start"] = [round(x, 1) for x in os.getloadavg()]
        time.sleep(args.follow_seconds)
        result["load_average_at_follow_end"] = [round(x, 1) for x in os.getloadavg()]
        cpu1, acks1, status1 = cpu_seconds(client), writer.lines(), sync_status(run_dir)
        t1 = time.monotonic()
        lag = probe.finish()
        samples = sampler.finish()
        changes = max(1, acks1 - acks0)
        per_1000 = (cpu1 - cpu0) / changes * 1000
        result["follow"] = {
            "seconds": round(t1 - t0, 1), "writer_rate": round(changes / (t1 - t0)),
            "lag_ms_e2e": lag, **samples,
            "applied": status1.get("applied", 0) - status0.get("applied", 0),
            "deleted": status1.get("deleted", 0) - status0.get("deleted", 0),
            "gaps": status1.get("gaps"), "reconciles": status1.get("reconciles"),
            "source_cpu_ms_per_1000_changes": round(per_1000 * 1000, 2),
            "sync_share_cpu_ms_per_1000_changes": round((per_1000 - per_1000_alone) * 1000, 2),
        }
        print(f"  follow: e2e lag {lag}, status lag {samples['lag_ms_status']}", flush=True)

        records = writer.stop()
        writer = None
        at_stop = read_sync(run_dir / "sync.json")
        stop_at = time.monotonic()
        sync.send_signal(signal.SIGTERM)
        code = sync.wait(300)
        result["stop"] = {"seconds_to_exit": round(time.monotonic() - stop_at, 2), "exit_code": code,
                          "state_at_sigterm": at_stop.get("state"), "pending_at_sigterm": at_stop.get("pending"),
                          "proof_open_at_sigterm": (at_stop.get("proof") or {}).get("open")}
        print(f"  stop: {result['stop']}", flush=True)
        if args.check:
            from snapshot import assert_same, snapshot
            lost = missing_witnesses(records, target)
            try:
                assert_same(snapshot(source), snapshot(target), ttl_tolerance_ms=1000)
                exact = True
            except AssertionError as exc:
                exact = str(exc)[:300]
            result["check"] = {"lost_witnesses": len(lost), "exact": exact}
            print(f"  check: {result['check']}", flush=True)
        return result
    finally:
        if writer:
            writer.kill()
        if sync and sync.poll() is None:
            sync.kill()
        source.stop()
        target.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=5000, help="the app's writes per second")
    parser.add_argument("--baseline-seconds", type=float, default=10)
    parser.add_argument("--follow-seconds", type=float, default=60)
    parser.add_argument("--copy-timeout", type=float, default=1800)
    parser.add_argument("--stop-during-proof", action="store_true",
                        help="only measure a SIGTERM sent while the proof pass runs")
    parser.add_argument("--check", action="store_true", help="snapshot both sides after the stop")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    base = testbed.scratch_dir("redis-migrate-bench-sync-")
    try:
        result = run(args, base)
    finally:
        testbed.remove(base)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        result.get("follow", {}).get("rss_mb", {}).pop("series", None)
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
