"""Benchmark of the zero-loss cutover (issue 13): the fence, the app's stall, writes lost, forwarded, conflicts,
and rollback --bring-back against a full verify. Not a test: it prints figures.

    python scripts/bench_cutover.py [--keys 1000000] [--rate 3000] [--rollout 10] [--cache-writes 10]

Real servers (a standalone Redis 7.0 source, the serverless-like TLS target) and moto's SSM. The apps are
tests/appwriter.py in --ssm-env mode (the storefront's shapes, witnesses, every reply recorded): app1 reads SSM
before the cutover (the old Redis), app2 after it (the cache). The sequence:
    seed, sync until following with its proof, app1 writing, cutover (fenced), app2 writing, the rollout
    (app1 still on the old Redis), app1 stops, sync idles then stops, lost witnesses of both apps;
    app2 goes on writing on the cache, stops, rollback --bring-back (timed), then a full verify (timed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
import bench  # noqa: E402
import testbed  # noqa: E402
from appwriter import AppWriter, longest_stall, missing_witnesses  # noqa: E402

PASSWORD = "bench-cutover-pw"
CPU: dict[str, float] = {}  # CPU seconds of the last run of each command (less sensitive to a shared machine)
ENV = "bench"


def tool(*args, timeout: float = 3600) -> tuple[int, dict, str, float]:
    command, env = bench.tool_command([str(a) for a in args])
    started = time.monotonic()
    before = os.times()
    done = subprocess.run(command, env={**env, **os.environ}, cwd=bench.TOOL_ROOT, capture_output=True, text=True,
                          timeout=timeout)
    took = time.monotonic() - started
    after = os.times()
    CPU[args[0]] = round(after.children_user + after.children_system - before.children_user
                         - before.children_system, 1)  # the tool and its scan workers, not the servers
    try:
        result = json.loads(done.stdout)
    except ValueError:
        result = {}
    return done.returncode, result, done.stderr, took


def sync_ledger(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "sync.json").read_text())
    except (OSError, ValueError):
        return {}


def wait(condition, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def ssm_setup(moto: testbed.MotoServer, source: testbed.RedisServer) -> None:
    os.environ.update(moto.env())
    import boto3
    ssm = boto3.client("ssm")
    prefix = f"/storefront/{ENV}/redis"
    ssm.put_parameter(Name=f"{prefix}/endpoint", Value="127.0.0.1", Type="String", Overwrite=True)
    ssm.put_parameter(Name=f"{prefix}/port", Value=str(source.port), Type="String", Overwrite=True)


class LateTask:
    """app2 (on the cache) during rollback --bring-back: it writes through the copy-back rounds, and is stopped
    `late_s` seconds after SSM points back at the old Redis (a late task replaced by the redeploy)."""

    def __init__(self, app: AppWriter, old_port: int, late_s: float) -> None:
        import threading
        self.app, self.old_port, self.late_s = app, str(old_port), late_s
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.records = None
        self.after_flip = None

    def start(self) -> LateTask:
        self.thread.start()
        return self

    def _run(self) -> None:
        import boto3
        ssm = boto3.client("ssm")
        while ssm.get_parameter(Name=f"/storefront/{ENV}/redis/port")["Parameter"]["Value"] != self.old_port:
            time.sleep(0.2)
        flipped = time.monotonic()
        time.sleep(self.late_s)
        self.records = self.app.stop()
        self.after_flip = round(time.monotonic() - flipped, 2)

    def join(self):
        self.thread.join(60)
        if self.records is None:
            self.records = self.app.stop()
        return self.records


def run(args: argparse.Namespace, base: Path) -> dict:
    certs = testbed.Certs.make(base / "certs")
    source = testbed.start_standalone(base / "source", password=PASSWORD)
    target = testbed.start_serverless_like(base / "target", certs, password=PASSWORD)
    moto = testbed.MotoServer(base / "moto").start()
    ssm_setup(moto, source)
    run_dir = base / "run"
    app1 = app2 = sync = None
    result: dict = {"keys": args.keys, "rate": args.rate, "rollout_s": args.rollout}
    try:
        result["seed_s"] = round(bench.timed(f"seed {args.keys:,} keys", lambda: bench.seed(source, args.keys))[0], 1)
        command, env = bench.tool_command(["sync", "--source", source.url(), "--target", target.url(),
                                           "--run-dir", str(run_dir), "--enable-notifications"])
        command.remove("--json")
        started = time.monotonic()
        sync = subprocess.Popen(command, env={**env, **os.environ}, cwd=bench.TOOL_ROOT,
                                stdout=open(base / "sync.out", "w"), stderr=open(base / "sync.err", "w"),
                                preexec_fn=testbed.die_with_parent)
        wait(lambda: sync_ledger(run_dir).get("state") == "following"
             and (sync_ledger(run_dir).get("proof") or {}).get("holds"), "sync following with its proof", 3600)
        result["sync_ready_s"] = round(time.monotonic() - started, 1)
        print(f"  sync following after {result['sync_ready_s']} s", flush=True)

        app1 = AppWriter(base / "app1.jsonl", ssm_env=ENV, password=PASSWORD, rate=args.rate, prefix="old").start()
        time.sleep(3)
        code, out, err, took = tool("cutover", "--env", ENV, "--target", target.url(), "--run-dir", run_dir,
                                    "--source", source.url(), timeout=600)
        if code != 0:
            raise SystemExit(f"cutover exited {code}: {err}")
        flipped = time.time()
        result["cutover"] = {"seconds": round(took, 2), **out.get("live", {})}
        print(f"  cutover: {result['cutover']}", flush=True)
        app2 = AppWriter(base / "app2.jsonl", ssm_env=ENV, password=PASSWORD, tls_ca=str(certs.ca), rate=args.rate,
                         prefix="new").start()
        time.sleep(args.rollout)
        records1 = app1.stop()
        app1 = None
        wait(lambda: sync_ledger(run_dir).get("pending") == 0, "sync idle", 600)
        time.sleep(1)
        ledger = sync_ledger(run_dir)
        sync.send_signal(signal.SIGTERM)
        result["sync_exit"] = sync.wait(300)
        sync = None
        stall, at = longest_stall(records1)
        result["app1"] = {"acked": len(records1.acked()), "longest_stall_ms": round(stall * 1000),
                          "stall_at_s_from_flip": round(at - flipped, 2) if at else None}
        result["forwarded"], result["conflicts"] = ledger.get("forwarded"), ledger.get("conflicts")
        time.sleep(args.cache_writes)
        if args.write_during_rollback:  # app2 goes on through the copy-back rounds, stops after the flip back
            late = LateTask(app2, source.port, args.late_s).start()
            code, out, err, took = tool("rollback", "--env", ENV, "--run-dir", run_dir, "--bring-back", "--source",
                                        source.url(), "--target", target.url(), "--json")
            records2 = late.join()
            app2 = None
            result["app2_after_flip_back_s"] = late.after_flip
        else:
            records2 = app2.stop()
            app2 = None
        lost = missing_witnesses([records1], target) if args.write_during_rollback else \
            missing_witnesses([records1, records2], target)
        result["lost_acknowledged_witnesses"] = len(lost)
        result["app2_acked"] = len(records2.acked())
        print(f"  rollout: {result['app1']}, forwarded {result['forwarded']}, conflicts {result['conflicts']}, "
              f"lost {len(lost)}", flush=True)

        if not args.write_during_rollback:
            code, out, err, took = tool("rollback", "--env", ENV, "--run-dir", run_dir, "--bring-back", "--source",
                                        source.url(), "--target", target.url(), "--json")
        if code not in (0, 1):
            print(err[-3000:], flush=True)
        back = out.get("bring_back", {})
        result["bring_back"] = {"exit": code, "seconds": round(took, 1), "rounds": len(back.get("rounds", [])),
                                "brought_back": back.get("brought_back"), "conflicts": back.get("conflicts"),
                                "final_differences": back.get("final_differences"), "phases": back.get("phases"),
                                "rounds_detail": [{k: r.get(k) for k in ("scanned", "found", "candidates", "copied",
                                                                         "compare_seconds", "seconds", "quiet_check")}
                                                  for r in back.get("rounds", [])],
                                "stragglers": back.get("stragglers")}
        code, out, err, took = tool("verify", "--source", source.url(), "--target", target.url(), "--json")
        result["full_verify"] = {"exit": code, "seconds": round(took, 1)}
        result["bring_back_vs_verify"] = round(result["bring_back"]["seconds"] / max(took, 0.01), 2)
        result["cpu_s"] = {"bring_back": CPU.get("rollback"), "verify": CPU.get("verify")}
        result["bring_back_vs_verify_cpu"] = round((CPU.get("rollback") or 0) / max(CPU.get("verify") or 0, 0.01), 2)
        print(f"  bring-back {result['bring_back']}, full verify {result['full_verify']}", flush=True)
        return result
    finally:
        for app in (app1, app2):
            if app:
                app.kill()
        if sync and sync.poll() is None:
            sync.kill()
        source.stop()
        target.stop()
        moto.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=3000, help="each app's commands per second")
    parser.add_argument("--rollout", type=float, default=10, help="seconds both apps write after the flip")
    parser.add_argument("--cache-writes", type=float, default=10, help="seconds app2 goes on alone before rollback")
    parser.add_argument("--write-during-rollback", action="store_true",
                        help="app2 goes on writing on the cache through the copy-back rounds (stopped --late-s "
                             "seconds after the flip back), as the issue's goal states it")
    parser.add_argument("--late-s", type=float, default=2.0, help="with --write-during-rollback: how long app2 "
                        "writes on the cache after SSM points back")
    args = parser.parse_args()
    base = testbed.scratch_dir("redis-migrate-bench-cutover-")
    try:
        print(json.dumps(run(args, base), indent=1))
    finally:
        testbed.remove(base)


if __name__ == "__main__":
    main()
