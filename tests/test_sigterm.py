"""SIGTERM, what ECS sends to stop a task (SIGKILL follows after the grace period): every stage ends at once
with exit 3 and a line saying how to resume, no traceback, no child left, the lock free; the rerun on the
same run dir is exact (independent snapshot). sync's own SIGTERM handling is in test_sync.py."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import pytest

import seed_data
from conftest import SOURCE_PASSWORD
from faultproxy import FaultProxy
from reliability import ledger, popen, spawn
from snapshot import assert_same, snapshot

RUN_TIMEOUT = 240


def dumping(run_dir: Path) -> bool:
    """The dump has made a durable segment and is not done."""
    segments = run_dir / "segments"
    return segments.is_dir() and any(segments.glob("*.seg")) and "finished_at" not in ledger(run_dir, "dump")


def verifying(run_dir: Path) -> bool:
    return "finished_at" in ledger(run_dir, "replay") and not (run_dir / "verify.json").exists()


def terminate_when(args, run_dir: Path, moment) -> None:
    """Start the command, SIGTERM it at `moment`, and check how it ended."""
    process = popen(*args)
    deadline = time.monotonic() + 120
    while process.poll() is None and not moment(run_dir) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, "the command finished before the moment to stop it"
    children = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 3, err
    assert "stopped by SIGTERM: rerun the same command" in err and "Traceback" not in err, err
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, alive


@pytest.fixture
def slow_source(standalone_source):
    """A source behind 3 ms of latency: the dump lasts long enough to be stopped in the middle."""
    with FaultProxy(standalone_source.port, max_seconds=600) as proxy:
        proxy.configure(latency_ms=3)
        yield standalone_source, f"redis://:{SOURCE_PASSWORD}@127.0.0.1:{proxy.port}/0"


def test_sigterm_mid_dump_then_rerun_is_exact(slow_source, serverless_target, run_dir):
    source, url = slow_source
    seed_data.seed(source.client(), 6000, seed=5, big_keys=False, short_ttl_keys=0)  # 6 segments: stopped after 1
    terminate_when(("dump", "--source", url, "--run-dir", run_dir, "--scan-count", 100, "--segment-records", 1000),
                   run_dir, dumping)
    rerun = spawn("run", "--source", url, "--target", serverless_target.url(), "--run-dir", run_dir,
                  timeout=RUN_TIMEOUT)
    assert rerun.exit_code == 0, str(rerun)
    assert_same(snapshot(source), snapshot(serverless_target))


def test_sigterm_mid_run_verify_leaves_no_worker_and_rerun_is_exact(standalone_source, serverless_target, run_dir):
    """`run` with its verify workers (forked children) running."""
    seed_data.seed(standalone_source.client(), 40_000, seed=6, big_keys=False, short_ttl_keys=0)
    args = ("run", "--source", standalone_source.url(), "--target", serverless_target.url(), "--run-dir", run_dir)
    terminate_when(args, run_dir, verifying)
    rerun = spawn(*args, timeout=RUN_TIMEOUT)
    assert rerun.exit_code == 0, str(rerun)
    assert_same(snapshot(standalone_source), snapshot(serverless_target))


def replaying(run_dir: Path) -> bool:
    return bool(ledger(run_dir, "replay").get("segments_done")) and "finished_at" not in ledger(run_dir, "replay")


def test_sigterm_mid_replay_then_rerun_is_exact(standalone_source, serverless_target, run_dir):
    seed_data.seed(standalone_source.client(), 8000, seed=7, big_keys=False, short_ttl_keys=0)
    assert spawn("dump", "--source", standalone_source.url(), "--run-dir", run_dir, "--segment-records", 1000,
                 timeout=RUN_TIMEOUT).exit_code == 0  # eight segments
    args = ("replay", "--target", serverless_target.url(), "--run-dir", run_dir)
    terminate_when((*args, "--max-ops-per-sec", 4000), run_dir, replaying)  # throttled: stopped between segments
    rerun = spawn(*args, timeout=RUN_TIMEOUT)
    assert rerun.exit_code == 0, str(rerun)
    assert_same(snapshot(standalone_source), snapshot(serverless_target))
