"""Cutover on a running sync: gate on sync's health, fence the old Redis, drain sync, flip SSM, lift the fence.

    gate    sync running and healthy: no unreconciled gap, lag under a bound, its running proof holds
            (this replaces the fresh-verify gate: no separate verify, no --force)
    fence   CLIENT PAUSE <fence-ms> WRITE on every source primary (fence.py); refused -> exit 2 unless --no-fence
    drain   DrainRequests: sync applies every change made before the fence and re-reads the keys changed
            since its proof's last check; any difference -> lift the fence, exit 1, SSM untouched
    flip    cutover.py's switch, unchanged: record, put, label, read back, partial-failure revert
    lift    flip.json first (sync forwards from then on), then CLIENT UNPAUSE, then the redeploys

The SSM steps are cutover.py's own: this module only supplies the gate and the hooks around the writes.
A dry run goes through the same path; its Writer lists the fence, drain and unpause instead of doing them.
If cutover dies between fence and flip, the pause lifts itself after fence-ms and SSM is untouched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis

from ..errors import BadInput, GateRefused, MigrateError
from ..net.endpoints import Endpoint, Topology, discover
from ..redact import redact_url
from ..rundir import Ledger, RunDir, RunLedger
from ..sync.forward import baseline_from_target
from ..sync.protocol import ConflictLog, DrainRequests, FlipLedger, SyncLedger
from .cutover import Check, Writer
from .fence import Fence

DEFAULT_FENCE_MS = 2000
DEFAULT_MAX_LAG_MS = 2000
NO_FENCE_DRAIN_S = 10.0
OWN_CLIENT_PREFIX = "redis-migrate"
GATE_HINT = ("wait until `redis-migrate status --run-dir DIR` shows sync following with lag under the bound, no open "
             "gap and its proof holding; --force cuts over anyway")


class LiveCutoverLedger(Ledger):
    """live-cutover.json: the phase of the last live cutover (fenced, flipped), its fence and drain, for status."""

    NAME = "live-cutover"

    def mark(self, **fields) -> None:
        self._data.update(fields, updated_at=time.time())
        self.save()

    def to_dict(self) -> dict:
        return dict(self._data)


def running_sync(run_dir: RunDir | None) -> SyncLedger | None:
    """The sync following on this run dir, if one is alive."""
    if run_dir is None:
        return None
    ledger = SyncLedger.load(run_dir)
    return ledger if ledger.found and ledger.running() else None


def sync_gate(ledger: SyncLedger, max_lag_ms: int) -> Check:
    """Pass while sync follows healthily: then every key is being kept equal, no verify needed."""
    healthy, reason = ledger.healthy(max_lag_ms)
    if not healthy:
        return Check(False, f"sync is not ready for the cutover: {reason}", GATE_HINT)
    proof = ledger.proof or {}
    return Check(True, f"sync following (pid {ledger.pid}): lag {ledger.lag_ms} ms, no open gap, proof holds "
                       f"({proof.get('rechecked_equal', 0)} keys changed since the verify re-read equal)")


def source_endpoint(run_dir: RunDir, source_url: str | None, tls_insecure: bool = False,
                    role: str = "source") -> Endpoint:
    """The old Redis (or with role "target", the cache): the URL given, else the run dir's own (its address;
    the password from REDIS_MIGRATE_SOURCE_PASSWORD / REDIS_MIGRATE_TARGET_PASSWORD)."""
    if source_url:
        return Endpoint.from_url(role, source_url, tls_insecure=tls_insecure, socket_timeout=10.0)
    bound = (RunLedger.load(run_dir).describe().get(role) or {}).get("url")
    if not bound:
        raise BadInput(f"run directory {run_dir.path} does not name its {role}",
                       f"pass --{role} URL" + (" (the old Redis the apps write to now)" if role == "source" else ""))
    return Endpoint.from_url(role, bound, tls_insecure=tls_insecure, socket_timeout=10.0)


@dataclass
class LiveFlip:
    """The hooks cutover.py's switch calls around its SSM writes (see cutover.SwitchHooks)."""

    run_dir: RunDir
    source: Topology | None          # None only with --no-fence
    fence_ms: int
    no_fence: bool
    target: str                      # redacted, for flip.json
    drain_timeout_s: float
    cache: Topology | None = None
    max_lag_ms: int = DEFAULT_MAX_LAG_MS
    fence: Fence | None = None
    dry_run: bool = False
    facts: dict = field(default_factory=dict)
    _fence_wall: float = 0.0
    _drain_started: float = 0.0

    def before_write(self, writer: Writer) -> None:
        self.dry_run = writer.dry_run
        started = time.monotonic()
        added = writer.step("baseline: record the cache's state of every key sync copied and did not record",
                            lambda: baseline_from_target(self.run_dir, self.cache))
        self.facts["baseline_added"], self.facts["baseline_ms"] = added, int((time.monotonic() - started) * 1000)
        if not writer.dry_run:
            self._still_healthy()
        if not self.no_fence:
            self.fence = Fence(self.source, self.fence_ms, writer.step)
            self._fence_wall = self.fence.raise_fence()
            self._mark(phase="fenced", fence_started_at=self._fence_wall)
        else:
            self._fence_wall = time.time()
            writer.step("no fence (--no-fence): writes in flight race the flip", lambda: None)
        self._drain(writer)

    def _still_healthy(self) -> None:
        """The gate again, right before the fence: the baseline's scan of a big cache takes a while."""
        check = sync_gate(SyncLedger.load(self.run_dir), self.max_lag_ms)
        if not check.passed:
            raise GateRefused(f"cutover refused right before the fence: {check.reason}", check.hint)

    def _drain(self, writer: Writer) -> None:
        drains = DrainRequests(self.run_dir)
        self._drain_started = time.monotonic()
        request_id = writer.step("ask sync to drain: apply every change made before the fence, re-read the keys "
                                 "changed since its proof's last check", lambda: drains.request(self._fence_wall))
        if writer.dry_run:
            return
        answer = drains.wait(request_id, self.drain_timeout_s)
        self.facts["drain_ms"] = int((time.monotonic() - self._drain_started) * 1000)
        if answer is None:
            raise GateRefused(f"sync did not answer the drain within {self.drain_timeout_s:.1f}s: nothing was flipped",
                              "check `redis-migrate status` (is sync following? is its lag small?), raise --fence-ms, "
                              "and rerun the cutover")
        self.facts["drain"] = {k: answer.get(k) for k in ("applied", "rechecked", "differences", "keys")}
        if answer.get("differences") and not self.no_fence:
            keys = ", ".join(map(str, (answer.get("keys") or [])[:10]))
            raise GateRefused(f"after the drain, {answer['differences']} key(s) still differ between the old Redis "
                              f"and the cache (e.g. {keys}): nothing was flipped",
                              "wait for sync to repair them (status), then rerun the cutover")

    def after_write(self, writer: Writer) -> None:
        """Record the flip (sync forwards from its next loop), then lift the fence at once."""
        flipped_at = time.time()
        flips = FlipLedger(self.run_dir)
        so_far = self.fence.elapsed_ms() if self.fence else 0
        writer.step("record flip.json: sync forwards old-side writes from now on, by compare-and-set",
                    lambda: flips.record(flipped_at, so_far, self.no_fence, self.target))
        if self.no_fence:
            self.facts["race_window_ms"] = int((time.monotonic() - self._drain_started) * 1000)
        else:
            self.facts["fence_ms"] = self.fence.lift()
            if self.fence.length_ms is not None and not writer.dry_run:
                flips.record(flipped_at, self.fence.length_ms, False, self.target)
            self.fence.close()
        self._mark(phase="flipped", flipped_at=flipped_at, **self.facts)

    def abort(self) -> str | None:
        """Lift the fence after a failure before the flip; a message if that failed (the pause then expires)."""
        if self.fence is None:
            return None
        try:
            self.facts["fence_ms"] = self.fence.lift()
        except MigrateError as exc:
            return exc.message
        finally:
            self.fence.close()
        self._mark(phase="aborted", **self.facts)
        return None

    def report(self) -> dict:
        return {"fence_limit_ms": None if self.no_fence else self.fence_ms, "no_fence": self.no_fence, **self.facts}

    def _mark(self, **fields) -> None:
        if not self.dry_run:
            LiveCutoverLedger.load(self.run_dir).mark(**fields)


def live_hooks(run_dir: RunDir, source_url: str | None, *, fence_ms: int, no_fence: bool, target: str,
               cache: Topology, max_lag_ms: int = DEFAULT_MAX_LAG_MS, tls_insecure: bool = False) -> LiveFlip:
    """The hooks for a cutover on a running sync: the source's primaries are found before anything is paused."""
    if fence_ms < 200:
        raise BadInput(f"--fence-ms {fence_ms} is too short to drain sync and write SSM", "use e.g. --fence-ms 2000")
    source = None if no_fence else discover(source_endpoint(run_dir, source_url, tls_insecure))
    drain_timeout = NO_FENCE_DRAIN_S if no_fence else max(fence_ms * 0.6 / 1000, 0.2)
    return LiveFlip(run_dir, source, fence_ms, no_fence, redact_url(target), drain_timeout, cache=cache,
                    max_lag_ms=max_lag_ms)


# --- status: the live cutover's figures -------------------------------------------------------------------

def live_status(run_dir: RunDir) -> dict | None:
    """Phase, fence length, forwarded writes, conflicts, time since the last old-side write and the old-side
    clients (CLIENT LIST without redis-migrate's own), once a live cutover or a sync touched this run dir."""
    sync, live, flip = SyncLedger.load(run_dir), LiveCutoverLedger.load(run_dir), FlipLedger.load(run_dir)
    if not (live.found or flip.found):
        return None
    facts = live.to_dict()
    phase = sync.phase if sync.found and sync.phase in ("forwarding", "stopped") and flip.flipped else \
        facts.get("phase", "flipped" if flip.flipped else "following")
    last_write = sync.last_old_write_at if sync.found else None
    return {"phase": phase, "fence_ms": facts.get("fence_ms"), "flipped_at": flip.flipped_at,
            "forwarded": sync.forwarded if sync.found else 0, "conflicts": ConflictLog(run_dir).count(),
            "seconds_since_last_old_write": round(time.time() - last_write, 1) if last_write else None,
            "old_side_clients": old_side_clients(run_dir)}


def old_side_clients(run_dir: RunDir) -> int | None:
    """Clients connected to the old Redis, without redis-migrate's own (None when it cannot be asked)."""
    try:
        endpoint = source_endpoint(run_dir, None)
        topology = discover(endpoint)
        count = 0
        for node in topology.masters:
            client = topology.client(node)
            try:
                for entry in client.client_list():
                    if not str(entry.get("name") or "").startswith(OWN_CLIENT_PREFIX):
                        count += 1
                count -= 1  # this connection
            finally:
                client.close()
        return count
    except (MigrateError, redis.RedisError, OSError):
        return None


def cutover_on_sync(env: str, sync: SyncLedger, run_dir: RunDir, *, target_url: str | None,
                    serverless_cache: str | None, source_url: str | None, prefix: str, fence_ms: int, no_fence: bool,
                    max_lag_ms: int, force: bool, redeploy: tuple[str, ...], dry_run: bool, clients=None,
                    tls_insecure: bool = False) -> dict:
    """cutover.py's switch with sync's gate and the fence/drain/unpause hooks. No run-dir lock: the running
    sync holds it, and this writes only cutover.json, live-cutover.json, flip.json and the drain request."""
    from .cutover import cutover
    cache = discover(source_endpoint(run_dir, target_url, tls_insecure, role="target"))
    hooks = live_hooks(run_dir, source_url, fence_ms=fence_ms, no_fence=no_fence, cache=cache, max_lag_ms=max_lag_ms,
                       target=target_url or f"serverless-cache:{serverless_cache}", tls_insecure=tls_insecure)
    result = cutover(env, target_url=target_url, serverless_cache=serverless_cache, run_dir=run_dir, prefix=prefix,
                     force=force, redeploy=redeploy, dry_run=dry_run, clients=clients,
                     gate=[sync_gate(sync, max_lag_ms)], hooks=hooks)
    result.setdefault("live", hooks.report())
    return result
