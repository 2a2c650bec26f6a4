"""rollback --bring-back: copy the apps' writes on the cache back to the old Redis, flip SSM back, catch stragglers.

ElastiCache Serverless has no change feed (no keyspace notifications, no replication), so the way back is
scan-based: our verify, run in reverse (the cache is the reference, the old Redis the side repaired).

    rounds      compare cache -> old; copy every key that differs to the old Redis; delete on the old Redis the
                keys the cache no longer has, but only those sync put on the cache (they existed at the flip or a
                forwarded write created them: the baseline says so) or bring-back wrote there. A key the old side
                created on its own after the flip is a conflict: reported, never deleted. The first round scans
                both sides; nothing but bring-back writes the old Redis before the flip back, so later rounds scan
                the cache alone and join its per-key folds with the old side's as known (copyback.py). Rounds go
                on until one finds fewer than --threshold differences, or cannot get there (the apps change as
                many keys per round: the straggler round takes them).
    flip back   cutover.py's rollback, unchanged (record, put, label, read back, redeploy).
    rollout     with --redeploy: wait until no task of an earlier deployment runs (those tasks read the cache's
                endpoint when they started: the late ones), up to --rollout-timeout; then the stragglers.
    stragglers  one more cache-only round, for the writes late tasks made on the cache before they were replaced,
                written by compare-and-set against what bring-back left on the old Redis: a key a new task wrote
                there after the flip back is kept, never overwritten.
    final       the last compare: the straggler round's scan when it found nothing, else one more cache-only scan
                joined with the old side as bring-back left it: exit 0 only when nothing but the reported
                conflicts and the keys newer on the old Redis differs (new tasks' writes on the old Redis are
                not differences).

Refused while a sync still runs on the run dir: it would write the old side's changes into the cache meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import BadInput, GateRefused
from ..keynames import readable
from ..net.endpoints import Topology
from ..net.wire import pack
from ..rundir import RunDir
from ..sync.baseline import Baseline
from ..sync.protocol import ConflictLog
from ..verify.compare import Difference
from ..verify.readers import SideReader
from ..verify.stage import SourceReference, VerifyOptions, delete_keys, judged, repair, settle
from .copyback import APPLIED, DELETED, KEPT, OldCas, Scanner

DEFAULT_THRESHOLD = 100
DEFAULT_ROLLOUT_TIMEOUT_S = 900
ROLLOUT_POLL_S = 5
MAX_ROUNDS = 10
COMPARE = VerifyOptions(ttl_tolerance_ms=2000, rounds=3, round_interval=0.2, repair=True)


@dataclass
class CopyBack:
    """The old Redis (repaired), the cache (the reference), the run dir's baseline, the conflicts so far."""

    old: Topology
    cache: Topology
    run_dir: RunDir
    dry_run: bool = False
    conflicts: set[bytes] = field(default_factory=set)
    kept: set[bytes] = field(default_factory=set)  # written on the old Redis after the flip back: newer, kept
    written: set[bytes] = field(default_factory=set)  # keys bring-back wrote on the old Redis (ours to delete)
    scanner: Scanner | None = None

    def __post_init__(self) -> None:
        if self.scanner is None:
            tolerance = COMPARE.ttl_tolerance_ms
            self.scanner = Scanner(self.old, self.cache, self.run_dir, max(tolerance, 1), tolerance)

    def compare(self) -> tuple[list[Difference], dict]:
        """The keys that differ and the scan's counts. The candidates are read once, not settled: a round copies
        what differs as it reads, and a key that moves meanwhile is the next round's."""
        expected, counts = self.scanner.candidates()
        return judged(self.scanner.read(list(expected)), COMPARE.ttl_tolerance_ms) if expected else [], counts

    def _ours(self, keys: list[bytes]) -> set[bytes]:
        """Of these keys (gone from the cache), those sync put on the cache or bring-back on the old Redis."""
        with Baseline(self.run_dir) as baseline:
            return baseline.put_by_sync(keys) | (set(keys) & self.written)

    def round(self, go_on: Callable[[list[bytes], float], bool] = lambda found, seconds: False) -> dict:
        """One round: compare, then copy what differs and delete what sync put there and the cache dropped.
        `go_on(found keys, seconds)`: whether another round follows; if so its scan starts before this round
        copies."""
        started = time.monotonic()
        differences, counts = self.compare()
        compared = round(time.monotonic() - started, 2)
        more = not self.dry_run and go_on([d.key for d in differences if d.key not in self.conflicts], compared)
        if more:
            self.scanner.start()
        extra = [d.key for d in differences if d.kind == "extra"]
        ours = self._ours(extra)
        new_conflicts = [key for key in extra if key not in ours and key not in self.conflicts]
        self._report(new_conflicts)
        to_copy = [d for d in differences if d.kind != "extra"]
        copied = deleted = 0
        if not self.dry_run:
            if to_copy:
                copied = self._copy(to_copy)
            gone = [key for key in extra if key in ours]
            deleted = delete_keys(self.old, gone) if gone else 0
            touched = [d.key for d in to_copy] + gone
            self.written.update(touched)
            self.scanner.reread_old(touched)
        found = len([d for d in differences if d.key not in self.conflicts])
        return {"found": found, "copied": copied, "deleted": deleted, "new_conflicts": len(new_conflicts),
                "compare_seconds": compared, "scanned": counts["scanned"], "candidates": counts["candidates"],
                "more": more}

    def quiet(self, found: list[bytes], threshold: int) -> dict:
        """Whether the apps wrote on the cache since the last round's scan (quiet.py: a sample and the names)."""
        from .quiet import cache_is_quiet
        return cache_is_quiet(self.scanner, found, threshold)

    def _copy(self, differences: list[Difference]) -> int:
        reference = SourceReference(self.cache, 0)
        try:
            return repair(reference, self.old, differences, COMPARE)["recopied"]
        finally:
            reference.close()

    def _report(self, keys: list[bytes]) -> None:
        log = ConflictLog(self.run_dir)
        for key in keys:
            self.conflicts.add(key)
            if not self.dry_run:
                log.add(key, "bring-back: created on the old Redis after the flip, absent on the cache; kept there")

    def stragglers(self) -> dict:
        """After the flip back: new tasks write to the old Redis, late ones still to the cache. The cache alone is
        scanned and joined with the old side as bring-back left it; each key that differs is written on the old
        Redis by compare-and-set against that state (copyback.OldCas): a key a new task already wrote there is
        theirs (kept, counted apart), never overwritten."""
        from ..datapath.reader import DumpOptions, read_records
        from ..datapath.replay import record_commands
        from ..net.endpoints import probe_rdb_version
        expected, _ = self.scanner.candidates()
        pairs = self.scanner.differing(self.scanner.read(list(expected))) if expected else {}
        present = [key for key, (cache_view, _) in pairs.items() if cache_view.present]
        records, _ = read_records(self.cache, present, DumpOptions(target_rdb=probe_rdb_version(self.old))) \
            if present else ([], None)
        by_key: dict[bytes, list] = {}
        for record in records:
            by_key.setdefault(record.key, []).append(record)
        gone = [key for key in pairs if key not in by_key]
        ours = self._ours(gone)
        self._report([key for key in gone if key not in ours and key not in self.conflicts
                      and pairs[key][1].present and expected[key] is not None])
        items = [(key, expected[key], [command for per_record in record_commands(chunks) for command, _ in per_record])
                 for key, chunks in by_key.items()]
        items += [(key, expected[key], [pack(b"DEL", key)]) for key in gone if key in ours]
        cas = OldCas(self.old, self.scanner)
        try:
            outcomes = cas.apply_all(items)
        finally:
            cas.close()
        self.kept.update(key for key, outcome in outcomes.items() if outcome == KEPT)
        self.scanner.reread_old([key for key, outcome in outcomes.items() if outcome in (APPLIED, DELETED)])
        values = list(outcomes.values())
        return {"found": len([k for k in pairs if k not in self.conflicts | self.kept]),
                "copied": values.count(APPLIED), "deleted": values.count(DELETED),
                "kept_newer_on_old": values.count(KEPT), "candidates": len(expected)}

    def final(self, stragglers_found: int) -> list[Difference]:
        """The last compare. When the straggler round found nothing, its scan was it (clean). Otherwise one more scan
        of the cache, joined with the old side as bring-back left it (new tasks' writes there are not differences):
        what still differs, other than the reported conflicts and the keys newer on the old Redis, such as a late
        task's write after the straggler scan had passed its key."""
        if stragglers_found == 0:
            return []
        expected, _ = self.scanner.candidates()
        keys = [key for key in expected if key not in self.conflicts | self.kept]
        pairs = self.scanner.differing(self.scanner.read(keys)) if keys else {}
        if not pairs:
            return []
        reference, old_reader = SourceReference(self.cache, 0), SideReader(self.old)
        try:
            differences = settle(reference, old_reader, pairs, COMPARE).differences
        finally:
            reference.close()
            old_reader.close()
        return [d for d in differences if d.key not in self.conflicts | self.kept]

    def close(self) -> None:
        self.scanner.close()


def copy_back_rounds(copier: CopyBack, threshold: int, max_rounds: int = MAX_ROUNDS) -> list[dict]:
    """Rounds until one finds fewer than `threshold` differences, or cannot get there (steady: no fewer than nine
    tenths of the round before, or `_cannot_converge`: the apps change that many keys per round, more rounds cannot
    shrink it; the straggler round after the flip back takes the rest), or the cache is quiet (quiet.py: no write
    since the round's scan, so the next round would find nothing); refused (SSM untouched) if none of these happens
    within `max_rounds`. The decision is taken right after a round's compare, so the next scan overlaps the copy."""
    rounds: list[dict] = []
    check: dict = {}

    def steady(found: int, seconds: float) -> bool:
        return bool(rounds) and (found >= 0.9 * rounds[-1]["found"]
                                 or _cannot_converge(found, seconds, rounds[-1]["seconds"], threshold))

    def go_on(found: list[bytes], seconds: float) -> bool:
        if len(found) < threshold or steady(len(found), seconds) or len(rounds) + 1 >= max_rounds:
            return False
        started = time.monotonic()
        check.update(copier.quiet(found, threshold), seconds=round(time.monotonic() - started, 2))
        return not check["quiet"]

    for _ in range(max_rounds):
        started = time.monotonic()
        check.clear()
        found = copier.round(go_on)
        more = found.pop("more")
        quiet = check.get("quiet", False)
        done = found["found"] < threshold or steady(found["found"], found["compare_seconds"]) or quiet
        rounds.append({**found, "seconds": round(time.monotonic() - started, 2),
                       **({"quiet_check": dict(check)} if check else {}),
                       **({"steady": True} if done and not quiet and found["found"] >= threshold else {})})
        if not more and (done or copier.dry_run):
            return rounds
    raise GateRefused(f"bring-back: {max_rounds} rounds each found {threshold} or more differences (the last "
                      f"{rounds[-1]['found']}) and still shrinking: the copy-back is slower than it should be; "
                      "SSM untouched",
                      "rerun with a higher --threshold (more is then left for the rounds after the flip back), or "
                      "when the apps write less")


class _Clock:
    """Seconds per phase, for the report (where the time of a bring-back goes)."""

    def __init__(self, phases: dict[str, float]) -> None:
        self.phases = phases

    @contextmanager
    def __call__(self, name: str):
        started = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = round(time.monotonic() - started, 2)


def _cannot_converge(found: int, seconds: float, before: float, threshold: int) -> bool:
    """What a round finds is what the apps changed while the round before ran: `found / before` keys a second.
    The next round takes about as long as this one, so it would find about `found * seconds / before`; when that
    is still over the threshold, rounds cannot get below it while the apps write: the straggler round takes it."""
    return found * seconds / max(before, 0.01) >= threshold


def refuse_running_sync(run_dir: RunDir) -> None:
    """sync would go on writing the old side's changes into the cache while they are copied back."""
    from .live_cutover import running_sync
    sync = running_sync(run_dir)
    if sync is not None:
        raise BadInput(f"a sync (pid {sync.pid}) is still running on {run_dir.path}",
                       f"stop it first: kill -TERM {sync.pid} (it applies what it heard and exits 0), then rerun "
                       "rollback --bring-back")


def check_old(old: Topology) -> None:
    if old.endpoint.db != 0:
        raise BadInput(f"--source {old.endpoint.redacted} names db {old.endpoint.db}: bring-back writes db 0 only",
                       "migrate and bring back db 0 (the only database ElastiCache Serverless has)")


def wait_for_rollout(clients, redeploy: tuple[str, ...], timeout_s: float, poll_s: float = ROLLOUT_POLL_S) -> dict:
    """Until the redeployed services run no task of an earlier deployment (the late tasks, still on the cache,
    are replaced), or `timeout_s`: the straggler round then copies what they wrote, and nothing more comes."""
    from .aws import parse_service, tasks_of_earlier_deployments
    services = [parse_service(text) for text in redeploy]
    started = time.monotonic()
    while True:
        left = {f"{cluster}/{service}": running for cluster, service in services
                if (running := tasks_of_earlier_deployments(clients, cluster, service))}
        waited = round(time.monotonic() - started, 1)
        if not left or waited >= timeout_s:
            return {"replaced": not left, "waited_s": waited, **({"still_running": left} if left else {})}
        time.sleep(min(poll_s, max(timeout_s - waited, 0.1)))


def bring_back(env: str, *, run_dir: RunDir, old: Topology, cache: Topology, threshold: int = DEFAULT_THRESHOLD,
               prefix: str, force: bool = False, redeploy: tuple[str, ...] = (), dry_run: bool = False,
               clients=None, rollout_timeout_s: float = DEFAULT_ROLLOUT_TIMEOUT_S) -> dict:
    """Copy back in rounds, flip SSM back (cutover.py's rollback), copy back the stragglers, compare once more."""
    from .aws import Clients
    from .cutover import rollback
    clients = clients or Clients()
    started = time.monotonic()
    check_old(old)
    copier = CopyBack(old, cache, run_dir, dry_run=dry_run)
    phases: dict[str, float] = {}
    clock = _Clock(phases)
    try:
        with clock("rounds"):
            rounds = copy_back_rounds(copier, threshold)
        with clock("flip_back"):
            result = rollback(env, run_dir=run_dir, prefix=prefix, force=force, redeploy=redeploy, dry_run=dry_run,
                              clients=clients)
        rollout = None
        if redeploy and not dry_run and not result["refused"]:
            with clock("rollout"):
                rollout = wait_for_rollout(clients, redeploy, rollout_timeout_s)
        with clock("stragglers"):
            stragglers = None if dry_run or result["refused"] else copier.stragglers()
        with clock("final"):
            final = copier.final(stragglers["found"]) if stragglers is not None else []
    finally:
        copier.close()
    result["bring_back"] = {
        "rounds": rounds, "rollout": rollout, "stragglers": stragglers,
        "brought_back": sum(r["copied"] + r["deleted"] for r in [*rounds, *([stragglers] if stragglers else [])]),
        "conflicts": len(copier.conflicts),
        "conflict_keys": [readable(key) for key in sorted(copier.conflicts)[:20]],
        "kept_newer_on_old": len(copier.kept),
        "final_differences": len(final), "seconds": round(time.monotonic() - started, 2), "phases": phases,
    }
    return result
