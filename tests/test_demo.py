"""The demo cannot rot: scripts/demo.sh runs end to end on a small data set and stops what it started."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def live_redis_servers_under(directory: Path) -> list[int]:
    """Running redis-server processes whose working directory is below `directory` (the demo's servers run
    in its scratch directory), zombies left out: the machine's other servers are not the demo's business."""
    found = []
    for process in psutil.process_iter(["name", "status"]):
        if process.info["name"] != "redis-server" or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if Path(process.cwd()).is_relative_to(directory):
                found.append(process.pid)
        except psutil.Error:
            continue  # it exited meanwhile
    return found


def test_demo_runs_end_to_end_and_cleans_up(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), "--keys", "3000"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for step in ("1. plan", "2. run", "3. cutover --dry-run", "4. cutover", "5. application-side check",
                 "6. rollback"):
        assert step in out
    summary = {line.split("  ", 2)[1].strip(): line.split("  ", 2)[2].strip()
               for line in out.split("== summary")[1].splitlines() if line.startswith("  ")}
    assert summary["verify"] == "equal"
    assert summary["SSM after rollback"] == summary["SSM before"] != summary["SSM after cutover"]
    assert "(TLS)" in out and "(plain)" in out
    assert "demo-source-password" not in out + done.stderr and "demo-target-password" not in out + done.stderr
    assert live_redis_servers_under(tmp_path) == []
