"""The run-dir files through which `sync` and `cutover` talk (see the sync <-> cutover protocol).

SyncLedger (sync.json): the running sync's state, written about every 0.5 s.
DrainRequests (sync/drain-request.json, sync/drain-done.json): cutover asks sync to drain after its fence.
FlipLedger (flip.json): cutover records the SSM flip; sync then forwards instead of copying.
ConflictLog (conflicts.jsonl): keys whose forwarded write met a changed target.

The seam for forward.py (the cutover's module): once sync sees flip.json it calls
`forward.attach(engine, run_dir)` once, if migrate/sync/forward.py exists and defines `attach`. `engine` is
the follow.Engine; attach replaces `engine.write_changes`, a callable `(records: list[Record], gone:
list[bytes]) -> None` that writes the re-read source state of the changed keys (records: dump records as
replay writes them; gone: keys deleted or expired on the source). It counts in `engine.counts.forwarded`
and may set `engine.conflicts` (shown in sync.json). `engine.writer` is the TargetWriter, and every applied
batch still goes through `engine.after_batch` (Baseline.record). After the flip, reconciles never delete
keys that exist only on the target.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid

from ..keynames import readable
from ..rundir import FILE_MODE, Ledger, RunDir

HEARTBEAT_STALE_S = 5.0
STATES = ("copying", "following", "reconciling", "stopped")
PHASES = ("following", "fenced", "flipped", "forwarding", "stopped")


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists (a zombie or a reused pid counts: the heartbeat settles it)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_host() -> str:
    """This process's machine and pid namespace: a pid means something only there. A second ECS task (a
    cutover or a status beside a sync task, on the same EFS run dir) sees other pids than the sync's."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}/{namespace}"


def empty_proof() -> dict:
    return {"verified_at": None, "holds": False, "changed_since": 0, "rechecked_equal": 0, "open": 0}


class SyncLedger(Ledger):
    """sync.json: what the running (or last) sync is doing; the only code that knows its keys."""

    NAME = "sync"
    INT_FIELDS = ("lag_ms", "pending", "applied", "deleted", "gaps", "unreconciled_gaps", "reconciles",
                  "forwarded", "conflicts")

    def _empty(self) -> dict:
        return {"pid": None, "heartbeat_at": None, "started_at": None, "state": "stopped", "phase": "stopped",
                **{name: 0 for name in self.INT_FIELDS}, "last_event_at": None, "last_old_write_at": None,
                "proof": empty_proof(), "slots": None, "targets": {}}

    def __getattr__(self, name: str):
        data = self.__dict__.get("_data")
        if data is None or name.startswith("_"):
            raise AttributeError(name)
        if name in data:
            return data[name]
        empty = self._empty()
        if name in empty:
            return empty[name]
        raise AttributeError(name)

    def update(self, **fields) -> None:
        """Change the given fields and save the ledger."""
        self._data.update(fields)
        self.save()

    def to_dict(self) -> dict:
        """Every field, for `status --json`."""
        return {**self._empty(), **self._data}

    def running(self) -> bool:
        """A live sync: not stopped, its process exists, and it beat within the last 5 s. A sync on another
        machine (another task sharing the run dir on EFS) is judged by its heartbeat alone."""
        beat = self._data.get("heartbeat_at") or 0
        host = self._data.get("host")
        here = host is None or host == process_host()
        return (self._data.get("state", "stopped") != "stopped" and (pid_alive(self._data.get("pid")) or not here)
                and time.time() - beat <= HEARTBEAT_STALE_S)

    def crashed(self) -> bool:
        """The last sync did not stop cleanly (killed): the events it missed while dead are unknown."""
        return self.found and self._data.get("state", "stopped") != "stopped" and not self.running()

    def healthy(self, max_lag_ms: int) -> tuple[bool, str]:
        """Whether cutover may go on: running, no open gap, lag within bound, proof holding."""
        if not self.running():
            return False, "sync is not running (start `redis-migrate sync` on this run dir)"
        if self._data.get("unreconciled_gaps", 0):
            return False, f"sync has {self._data['unreconciled_gaps']} unreconciled gap(s); wait for the reconcile"
        if self._data.get("lag_ms", 0) > max_lag_ms:
            return False, f"sync lag {self._data['lag_ms']} ms is above {max_lag_ms} ms"
        if not (self._data.get("proof") or {}).get("holds"):
            return False, "sync's proof does not hold yet (the verify after the copy has not passed)"
        return True, "ok"


class DrainRequests:
    """Cutover asks the running sync to drain (after its fence); sync answers with what it applied."""

    REQUEST = "sync/drain-request"
    DONE = "sync/drain-done"

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir
        (run_dir.path / "sync").mkdir(mode=0o700, exist_ok=True)

    def request(self, fence_started_at: float) -> str:
        request_id = str(uuid.uuid4())
        self.run_dir.write(self.REQUEST, {"id": request_id, "requested_at": time.time(),
                                          "fence_started_at": fence_started_at})
        return request_id

    def pending(self) -> dict | None:
        """The request not answered yet, if any."""
        request = self.run_dir.read(self.REQUEST)
        if not request:
            return None
        done = self.run_dir.read(self.DONE)
        if done and done.get("id") == request.get("id"):
            return None
        return request

    def answer(self, request_id: str, applied: int, rechecked: int, differences: int, keys: list) -> None:
        self.run_dir.write(self.DONE, {"id": request_id, "done_at": time.time(), "applied": applied,
                                       "rechecked": rechecked, "differences": differences,
                                       "keys": [key if isinstance(key, str) else readable(key)
                                                for key in keys[:100]]})

    def wait(self, request_id: str, timeout_s: float) -> dict | None:
        """The answer to this request, or None when it did not come within the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            done = self.run_dir.read(self.DONE)
            if done and done.get("id") == request_id:
                return done
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)


class FlipLedger(Ledger):
    """flip.json: cutover flipped the SSM parameters; from then on sync forwards."""

    NAME = "flip"

    @property
    def flipped(self) -> bool:
        return bool(self._data.get("flipped_at"))

    @property
    def flipped_at(self) -> float | None:
        return self._data.get("flipped_at")

    @property
    def no_fence(self) -> bool:
        return bool(self._data.get("no_fence"))

    def record(self, flipped_at: float, fence_ms: int, no_fence: bool, target: str) -> None:
        self._data = {"flipped_at": flipped_at, "fence_ms": fence_ms, "no_fence": no_fence, "target": target}
        self.save()


class ConflictLog:
    """conflicts.jsonl: one JSON object a line per key whose forwarded write found the target changed."""

    def __init__(self, run_dir: RunDir) -> None:
        self.path = run_dir.path / "conflicts.jsonl"

    def add(self, key: bytes | str, reason: str) -> None:
        name = key if isinstance(key, str) else readable(key)
        line = json.dumps({"key": name, "at": time.time(), "reason": reason}) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def _lines(self) -> list[dict]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def count(self) -> int:
        return len(self._lines())

    def keys(self, limit: int = 100) -> list[str]:
        return [entry["key"] for entry in self._lines()[:limit]]
